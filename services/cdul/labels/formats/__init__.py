"""The label file formats, a registry: ``--format`` -> :class:`~.base.LabelFormat`.

Each format is one module holding its writer and, where reviewed files come back in
it, its reader; a new format is one module and one line in :data:`FORMATS`.
"""

from __future__ import annotations

from cdul.core.errors import ConfigError
from cdul.labels.formats import csv_table, fiftyone, json_document, label_studio
from cdul.labels.formats.base import Decisions, Exported, LabelFormat, Row, score_value

__all__ = ["FORMATS", "READABLE", "Decisions", "Exported", "LabelFormat", "Row", "guess_format",
           "score_value"]  # fmt: skip

FORMATS: dict[str, LabelFormat] = {
    f.name: f
    for f in (csv_table.FORMAT, json_document.FORMAT, label_studio.FORMAT, fiftyone.FORMAT)
}
#: The formats ``cdul label-import`` reads.
READABLE: dict[str, LabelFormat] = {name: f for name, f in FORMATS.items() if f.read}


def guess_format(name: str, text: str) -> LabelFormat:
    """The readable format of a reviewed file: by its name's ending, else by its text."""
    named = [f for f in READABLE.values() if f.suffix and name.lower().endswith(f.suffix)]
    candidates = named or list(READABLE.values())
    for f in candidates:
        if f.looks_like is not None and f.looks_like(text):
            return f
    fallback = [f for f in candidates if f.looks_like is None]
    if not fallback and not named:
        raise ConfigError(f"cannot tell the format of {name}: give --format")
    return (fallback or named)[0]
