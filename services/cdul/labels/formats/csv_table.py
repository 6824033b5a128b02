"""``csv``: ``image_id,path,labels,review_score,<class>...``, one row per image, ``labels``
joined by ``;``, the image's review score (lowest: review first), then one score column
per class (spreadsheets, pandas). An edited copy comes back
through ``cdul label-import``: its ``image_id`` and ``labels`` columns. A CSV row carries
no "reviewed" mark, so a row counts as reviewed when its labels differ from the run's."""

from __future__ import annotations

import csv
import io
from typing import TYPE_CHECKING

from cdul.core.errors import ConfigError
from cdul.labels.formats.base import Decisions, Exported, LabelFormat

if TYPE_CHECKING:
    from cdul.labels.export import ExportConfig

CSV_COLUMNS = ("image_id", "path", "labels", "review_score")
CSV_SEPARATOR = ";"


def write_csv(exported: Exported, config: ExportConfig) -> dict[str, str]:
    clash = sorted(set(CSV_COLUMNS) & set(exported.classes))
    if clash:
        raise ConfigError(f"class name(s) {clash} clash with the CSV's own columns: use json")
    joined = [c for c in exported.classes if CSV_SEPARATOR in c]
    if joined:
        raise ConfigError(f"class name(s) {joined} contain {CSV_SEPARATOR!r}: use json")
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*CSV_COLUMNS, *exported.classes])
    for row in exported.rows():
        writer.writerow([row.image_id, row.path, CSV_SEPARATOR.join(row.labels),
                         row.review_score, *row.scores])  # fmt: skip
    return {config.output: out.getvalue()}


def read_csv(text: str, source: str) -> Decisions:
    """Every row of an edited label-export CSV (filtered to changed rows later)."""
    id_column, labels_column = CSV_COLUMNS[0], CSV_COLUMNS[2]
    decisions: Decisions = {}
    try:
        reader = csv.DictReader(io.StringIO(text))
        needed = [c for c in (id_column, labels_column) if c not in (reader.fieldnames or [])]
        if needed:
            raise ConfigError(f"{source} is not a label-export CSV: no {', '.join(needed)} column")
        for number, row in enumerate(reader, start=2):
            image_id, labels = row[id_column], row[labels_column] or ""
            if not image_id:
                raise ConfigError(f"{source}: line {number} has no image_id")
            if image_id in decisions:
                raise ConfigError(f"{source}: image {image_id!r} has two rows")
            names = [name.strip() for name in labels.split(CSV_SEPARATOR)]
            decisions[image_id] = list(dict.fromkeys(name for name in names if name))
    except csv.Error as error:
        raise ConfigError(f"{source} is not a readable CSV: {error}") from None
    return decisions


FORMAT = LabelFormat("csv", write_csv, read_csv, reviewed=False, suffix=".csv")
