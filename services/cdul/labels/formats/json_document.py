"""``json``: ``{"run", "dataset", "vector", "thresholds": {class: threshold or null},
"threshold_source", "rule", "classes", "review_score_source", "images": [{"image_id",
"path", "labels": [...], "review_score", "scores": {class: score}}]}`` (a ``null``
threshold: the class is never a label; ``review_score``: lowest first, see
:mod:`cdul.labels.queue`)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from cdul.labels.formats.base import Exported, LabelFormat

if TYPE_CHECKING:
    from cdul.labels.export import ExportConfig


def json_text(value: Any) -> str:
    """The export's JSON style: indented, UTF-8 kept, a final newline."""
    return json.dumps(value, indent=2, ensure_ascii=False) + "\n"


def write_json(exported: Exported, config: ExportConfig) -> dict[str, str]:
    classes = exported.classes
    document = {
        "run": exported.run,
        "dataset": exported.labels.manifest.dataset,
        "vector": exported.vector,
        "thresholds": exported.thresholds.to_json(classes),
        "threshold_source": exported.thresholds.source,
        "rule": "a class is a label when its score >= its threshold",
        "classes": classes,
        "review_score_source": exported.review_source,
        "images": [
            {"image_id": row.image_id, "path": row.path, "labels": row.labels,
             "review_score": row.review_score,
             "scores": dict(zip(classes, row.scores, strict=True))}
            for row in exported.rows()
        ],
    }  # fmt: skip
    return {config.output: json_text(document)}


FORMAT = LabelFormat("json", write_json)
