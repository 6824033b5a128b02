"""``fiftyone``: a ``labels.json`` of ``fo.types.FiftyOneImageClassificationDataset``:
``classes`` plus, keyed by absolute image path, a list of ``{"label": class index,
"confidence": score}`` (FiftyOne loads a list as multi-label Classifications). FiftyOne
reads media from local files, so an ``s3://`` image is refused. The format holds labels
only: an image's review score is in the csv and json exports."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cdul.core.errors import ConfigError
from cdul.labels.formats.base import Exported, LabelFormat
from cdul.labels.formats.json_document import json_text

if TYPE_CHECKING:
    from cdul.labels.export import ExportConfig


def write_fiftyone(exported: Exported, config: ExportConfig) -> dict[str, str]:
    remote = [p for p in exported.paths if "://" in p]
    if remote:
        raise ConfigError(
            f"FiftyOne reads images from local files, not {remote[0]!r}: copy the images "
            f"to a folder and export with --images folder:DIR"
        )
    index = {c: j for j, c in enumerate(exported.classes)}
    targets = {
        row.path: [{"label": index[c], "confidence": row.scores[index[c]]} for c in row.labels]
        for row in exported.rows()
    }
    return {config.output: json_text({"classes": exported.classes, "labels": targets})}


FORMAT = LabelFormat("fiftyone", write_fiftyone)
