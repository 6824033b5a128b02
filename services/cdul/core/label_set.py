"""A label set: the class names and the prompt template the CLIP service scores against.

Its own module, free of torch and open_clip, because both sides of the wire use it:
the service (which encodes the prompts) and the labeler's client (which sends the set
by value or by its digest), and the labeler's image installs no CLIP.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

from cdul.core.errors import CdulError, ConfigError

DEFAULT_TEMPLATE = "a photo of a {}"


def read_class_file(path: str | Path, error: type[CdulError] = ConfigError) -> tuple[str, ...]:
    """Class names from a text file, one per line (blank lines and ``#`` comments
    skipped); ``error`` (naming the file) if it is unreadable, empty or repeats a name."""
    try:
        lines = Path(path).expanduser().read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as problem:
        reason = getattr(problem, "strerror", None) or problem
        raise error(f"cannot read the class list {path}: {reason}") from None
    names = [line.strip() for line in lines]
    names = [name for name in names if name and not name.startswith("#")]
    if not names:
        raise error(f"the class list {path} names no class")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise error(f"the class list {path} repeats {', '.join(repeated)}")
    return tuple(names)


def parse_class_names(spec: str) -> tuple[str, ...]:
    """Class names from a file (see :func:`read_class_file`) or, when ``spec`` is not
    an existing file, a comma-separated list."""
    if Path(spec).expanduser().is_file():
        return read_class_file(spec)
    if "," not in spec and ("/" in spec or spec.endswith(".txt")):
        # Looks like a path that is not there, not a one-class list.
        raise ConfigError(f"class file {spec!r} does not exist")
    names = tuple(name.strip() for name in spec.split(",") if name.strip())
    if not names:
        raise ConfigError(f"class list {spec!r} names no classes")
    if len(set(names)) != len(names):
        raise ConfigError(f"class list {spec!r} repeats a class name")
    return names


@dataclass(frozen=True)
class LabelSet:
    """Class names and the prompt template that turns each into a sentence."""

    classes: tuple[str, ...]
    template: str = DEFAULT_TEMPLATE

    def __post_init__(self) -> None:
        if not self.classes:
            raise ConfigError("the label set is empty: give at least one class name")
        if any(not c.strip() for c in self.classes):
            raise ConfigError("the label set has an empty class name")
        if len(set(self.classes)) != len(self.classes):
            raise ConfigError(f"the label set repeats a class name: {list(self.classes)}")
        if self.template.count("{}") != 1:
            raise ConfigError(
                f"prompt template {self.template!r} must contain exactly one '{{}}' placeholder"
            )
        try:
            self.prompts()
        except (IndexError, KeyError, ValueError) as error:
            raise ConfigError(
                f"prompt template {self.template!r} has an unknown placeholder: {error}"
            ) from None

    def prompts(self) -> list[str]:
        return [self.template.format(c) for c in self.classes]

    def digest(self) -> str:
        """A stable hash naming this label set (cache key, wire reference)."""
        return self._digest

    @functools.cached_property
    def _digest(self) -> str:  # asked for several times per request: hashed once
        text = "\x1f".join((self.template, *self.classes))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()
