"""Per-class decision thresholds as files and JSON values.

A thresholds file gives every class of a label set its threshold: JSON ``{"class":
threshold, ...}`` (``null``: the class is never a label) or CSV ``class,threshold``
lines (an optional ``class,threshold`` header; an empty threshold: never). In memory a
threshold that never fires is infinity; in JSON it is ``null``. ``cdul label-export``
and the other label tools (``--thresholds FILE``) and ``cdul archive`` read them.
"""

from __future__ import annotations

import csv
import io
import json
import math

import numpy as np
import torch

from cdul.core.errors import ConfigError
from cdul.core.storage import open_location


def thresholds_to_json(values: torch.Tensor) -> list[float | None]:
    """``(C,)`` thresholds as JSON values: a float32-exact decimal each, None = never."""
    return [None if math.isinf(v) else float(str(np.float32(v))) for v in values.tolist()]


def thresholds_from_json(values: list[float | None]) -> torch.Tensor:
    return torch.tensor([math.inf if v is None else float(v) for v in values])


def read_thresholds_file(location: str, classes: list[str]) -> torch.Tensor:
    """Per-class thresholds ``(C,)`` from a JSON or CSV file (see the module docstring):
    every one of ``classes`` exactly once, each in [0, 1] (or never); ConfigError naming
    what is wrong otherwise."""
    store, key = open_location(location)
    text = store.read_bytes(key).decode("utf-8-sig", errors="replace")
    if text.lstrip().startswith("{"):
        try:
            given = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError(f"thresholds file {location} is not JSON: {error}") from None
        pairs = list(given.items())
    else:
        rows = [r for r in csv.reader(io.StringIO(text)) if r and any(x.strip() for x in r)]
        if rows and rows[0][0].strip().lower() == "class":
            rows = rows[1:]
        if any(len(r) != 2 for r in rows):
            raise ConfigError(f"thresholds file {location}: expected CSV lines 'class,threshold'")
        pairs = [(r[0].strip(), r[1].strip() or None) for r in rows]
    unknown = [name for name, _ in pairs if name not in classes]
    missing = [c for c in classes if c not in {name for name, _ in pairs}]
    if unknown or missing or len(pairs) != len(classes):
        raise ConfigError(
            f"thresholds file {location} must give each of the {len(classes)} classes "
            f"once: unknown {unknown}, missing {missing}"
        )
    found = dict(pairs)
    values = []
    for name in classes:
        value = found[name]
        try:
            number = math.inf if value is None else float(value)
        except (TypeError, ValueError):
            raise ConfigError(
                f"thresholds file {location}: {name!r}: {value!r} is not a number"
            ) from None
        if not math.isinf(number) and not 0.0 <= number <= 1.0:
            raise ConfigError(f"thresholds file {location}: {name!r}: {number} is outside [0, 1]")
        values.append(number)
    return torch.tensor(values)
