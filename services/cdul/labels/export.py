"""``cdul label-export RUN --format F -o OUT``: a run's pseudo labels for people and tools.

A class is a label of an image when its score (on ``--vector``, default ``final``) is at
least the class's threshold: the run's label-free one by default, ``--threshold T`` for
one on every class, ``--thresholds FILE`` for a user's (:mod:`cdul.labels.reading`). A
score equal to the threshold is a label. Scores are written as the
shortest decimal that reads back as the stored float32, so the file and the decision
agree. Each image also gets its ``review_score`` (:mod:`cdul.labels.queue`: in (0, 1),
lowest first = its most doubtful label is the likeliest mistake; csv, json and
label-studio carry it). The formats are the registry :data:`cdul.labels.formats.FORMATS` (csv, json,
label-studio, fiftyone: each module's docstring says its layout).

Image paths are the dataset's (``--images SPEC`` when it moved since labeling), local
ones made absolute; the rows are matched to the images as ``cdul train RUN SPEC``
matches them (:func:`cdul.labels.matching.match_images`), so an export lists exactly
the images the trainer learns from.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass

from cdul.core.datasets import SPEC_FORMS
from cdul.core.errors import ConfigError
from cdul.core.pseudo_labels import read_pseudo_labels
from cdul.core.settings import add_flags, from_args, setting
from cdul.core.storage import open_location, open_store
from cdul.labels.formats import FORMATS, Exported
from cdul.labels.formats.base import absolute_path, score_value
from cdul.labels.formats.label_studio import LOCAL_FILES_PREFIX
from cdul.labels.label_studio_api import LabelStudioApi, push_tasks
from cdul.labels.matching import images_spec, match_images
from cdul.labels.queue import priorities
from cdul.labels.reading import LabelReading

log = logging.getLogger("cdul.labels")


@dataclass(frozen=True, kw_only=True)
class ExportConfig(LabelReading):
    run: str
    output: str
    format: str = setting("csv", "output format", choices=tuple(FORMATS))
    images: str | None = setting(
        None, "dataset spec to take image paths from (default: the run's own dataset)",
        metavar="SPEC",
    )  # fmt: skip
    image_root: str | None = setting(
        None, "label-studio: the directory Label Studio serves local files from "
        "(its LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT); images must lie below it",
        metavar="DIR",
    )  # fmt: skip
    image_url_prefix: str = setting(
        LOCAL_FILES_PREFIX,
        "label-studio: an image's URL is this + its URL-quoted path below --image-root",
    )
    config_out: str | None = setting(
        None, "label-studio: where the labeling config goes (default: OUT with .xml)",
        metavar="PATH",
    )  # fmt: skip
    push: str | None = setting(
        None, "label-studio: also import the tasks into Label Studio at this URL (with "
        "--project; API key in $LABEL_STUDIO_API_KEY); tasks already there are skipped",
        metavar="URL",
    )  # fmt: skip
    project: int | None = setting(None, "label-studio --push: the project's id", type=int)
    push_page: int = setting(500, "label-studio --push: tasks per import request")
    progress: bool = setting(True, "no progress bar")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.push is not None and self.format != "label-studio":
            raise ConfigError("--push takes --format label-studio")
        if (self.push is None) != (self.project is None):
            raise ConfigError("give --push URL and --project ID together")
        if self.push_page < 1:
            raise ConfigError(f"--push-page must be >= 1, got {self.push_page}")


def load(config: ExportConfig) -> Exported:
    """Read the run and find each labeled image's path in its dataset."""
    store = open_store(config.run)
    labels = read_pseudo_labels(store)
    matched = match_images(labels, images_spec(labels, config.images), config.run)
    paths = [absolute_path(path) for path in matched.paths()]
    found = priorities(labels, store, config)
    scores = [score_value(s) for s in found.image_scores().float().numpy()]
    return Exported(config.run, labels, config.vector, found.thresholds, paths, scores,
                    found.source)  # fmt: skip


def export(config: ExportConfig) -> tuple[Exported, list[str]]:
    """Write the export; return what was exported and the locations written."""
    exported = load(config)
    files = FORMATS[config.format].write(exported, config)
    for location, text in files.items():
        store, key = open_location(location)
        store.write_text(key, text)
    if config.push is not None and config.project is not None:
        api = LabelStudioApi(config.push)
        tasks = json.loads(files[config.output])
        pushed, skipped = push_tasks(api, config.project, tasks, config.push_page, config.progress)
        log.info("pushed %d task(s) into %s project %d (%d already there)", pushed, config.push,
                 config.project, skipped)  # fmt: skip
    return exported, list(files)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="the run URI (s3://BUCKET/RUN or file://DIR)")
    parser.add_argument("-o", "--output", required=True, help="the file (or s3:// object) to write")
    add_flags(parser, ExportConfig)
    parser.epilog = f"--images takes {' | '.join(SPEC_FORMS)}"


def run(args: argparse.Namespace) -> int:
    config = from_args(ExportConfig, args)
    exported, written = export(config)
    count = int(exported.chosen.sum())
    print(
        f"wrote {', '.join(written)}: {len(exported.labels)} images, {count} labels with "
        f"{config.vector} >= each class's threshold ({exported.thresholds.source}; "
        f"{config.format})"
    )
    if config.format == "label-studio":
        print(
            "import the tasks into a project whose labeling config is the .xml; local images "
            "need LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true and a Local Files source "
            "storage under LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"
        )
    return 0
