"""``cdul label-export RUN --format F -o OUT``: a run's pseudo labels for people and tools.

A class is a label of an image when its score (on ``--vector``, default ``final``) is at
least ``--threshold``: a score equal to the threshold is a label, the side
:func:`cdul.core.evaluation.best_f1_threshold` uses too. Scores are written as the
shortest decimal that reads back as the stored float32, so the file and the decision
agree. Formats (the registry :data:`FORMATS`):

``csv``
    ``image_id,path,labels,<class>...``: one row per image, ``labels`` joined by ``;``,
    then one score column per class (spreadsheets, pandas; ``cdul label-import`` reads
    an edited copy back).
``json``
    ``{"run", "dataset", "vector", "threshold", "rule", "classes", "images": [{"image_id",
    "path", "labels": [...], "scores": {class: score}}]}``.
``label-studio``
    Label Studio tasks with pre-annotations (its "Basic Label Studio JSON format",
    ``predictions`` holding one multi-label ``choices`` result), and beside them the
    labeling config (``OUT`` with ``.xml``, or ``--config-out``) whose ``Choices``
    control (``name="labels"``, ``choice="multiple"``) the results refer to.
``fiftyone``
    A ``labels.json`` of ``fo.types.FiftyOneImageClassificationDataset``: ``classes``
    plus, keyed by absolute image path, a list of ``{"label": class index,
    "confidence": score}`` (FiftyOne loads a list as multi-label Classifications).

Image paths are the dataset's (``--images SPEC`` when it moved since labeling), local
ones made absolute. Label Studio needs URLs: ``--image-root DIR`` (its
``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT``) turns an image under DIR into
``--image-url-prefix`` (``/data/local-files/?d=``) + its URL-quoted relative path;
``s3://`` URIs pass unchanged (Label Studio presigns them through a connected S3 source
storage). FiftyOne reads media from local files, so an ``s3://`` image is refused.
"""

from __future__ import annotations

import argparse
import csv
import functools
import io
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple
from urllib.parse import quote
from xml.sax.saxutils import escape

import numpy as np

from cdul.core.datasets import SPEC_FORMS
from cdul.core.errors import ConfigError
from cdul.core.pseudo_labels import (
    MANIFEST,
    LabelManifest,
    LabelReading,
    PseudoLabels,
    over_threshold,
    read_pseudo_labels,
)
from cdul.core.settings import add_flags, from_args, setting
from cdul.core.storage import ObjectStore, open_store

#: Label Studio's URL for a file under LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT.
LOCAL_FILES_PREFIX = "/data/local-files/?d="
CSV_COLUMNS = ("image_id", "path", "labels")
CSV_SEPARATOR = ";"
#: Names in the Label Studio labeling config; label-import reads results by them.
LS_IMAGE, LS_CHOICES = "image", "labels"


def location_store(location: str) -> tuple[ObjectStore, str]:
    """The store holding a file (``out/a.csv``, ``file:///x/a.csv``) or an object
    (``s3://bucket/dir/a.csv``), and its key there: every read and write of an export
    goes through the storage layer (atomic writes, S3 with its retries)."""
    scheme, sep, rest = location.partition("://")
    if not sep or scheme == "file":
        path = os.path.abspath(rest if sep else location)
        return open_store(os.path.dirname(path)), os.path.basename(path)
    parent, _, name = location.rstrip("/").rpartition("/")
    if not name or "/" not in rest.rstrip("/"):
        raise ConfigError(f"{location!r} names no object (expected {scheme}://BUCKET/KEY)")
    return open_store(parent), name


def score_value(score: np.float32) -> float:
    """The shortest decimal that reads back as this float32 (0.3, not 0.30000001192…)."""
    return float(str(np.float32(score)))


class Row(NamedTuple):
    image_id: str
    path: str
    labels: list[str]
    scores: list[float]


@dataclass
class Exported:
    """A run's scores on one vector, with each image's path: what every writer reads."""

    run: str
    labels: PseudoLabels
    vector: str
    threshold: float
    paths: list[str]

    @property
    def classes(self) -> list[str]:
        return list(self.labels.classes)

    @functools.cached_property
    def scores(self) -> np.ndarray:
        return self.labels[self.vector].numpy().astype(np.float32)

    @functools.cached_property
    def chosen(self) -> np.ndarray:
        return over_threshold(self.labels[self.vector], self.threshold)

    def rows(self) -> Iterator[Row]:
        classes = self.classes
        for i, image_id in enumerate(self.labels.ids):
            chosen = [classes[j] for j in np.flatnonzero(self.chosen[i])]
            scores = [score_value(s) for s in self.scores[i]]
            yield Row(image_id, self.paths[i], chosen, scores)


def _absolute(path: str) -> str:
    return path if "://" in path else os.path.abspath(path)


# -- the writers: (export, config) -> {location: text} --------------------------------


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
        writer.writerow([row.image_id, row.path, CSV_SEPARATOR.join(row.labels), *row.scores])
    return {config.output: out.getvalue()}


def _json_text(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False) + "\n"


def write_json(exported: Exported, config: ExportConfig) -> dict[str, str]:
    classes = exported.classes
    document = {
        "run": exported.run,
        "dataset": exported.labels.manifest.dataset,
        "vector": exported.vector,
        "threshold": exported.threshold,
        "rule": "a class is a label when its score >= threshold",
        "classes": classes,
        "images": [
            {"image_id": row.image_id, "path": row.path, "labels": row.labels,
             "scores": dict(zip(classes, row.scores, strict=True))}
            for row in exported.rows()
        ],
    }  # fmt: skip
    return {config.output: _json_text(document)}


def image_url(path: str, config: ExportConfig) -> str:
    """What a Label Studio task's ``data.image`` holds for an image at ``path``."""
    if config.image_root is None:
        if path.startswith(("s3://", "http://", "https://")):
            return path
        raise ConfigError(
            f"Label Studio opens images by URL, not {path!r}: give --image-root DIR, "
            "the LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT it serves them from"
        )
    root = _absolute(config.image_root).rstrip("/")
    if not path.startswith(root + "/"):
        raise ConfigError(f"image {path!r} is not under --image-root {root!r}")
    return config.image_url_prefix + quote(path[len(root) + 1 :], safe="/")


def labeling_config(classes: list[str]) -> str:
    """The Label Studio labeling config the exported predictions refer to."""
    quoted = [escape(c, {'"': "&quot;"}) for c in classes]  # attribute values in "..."
    choices = "\n".join(f'    <Choice value="{c}"/>' for c in quoted)
    return (
        f'<View>\n  <Image name="{LS_IMAGE}" value="${LS_IMAGE}"/>\n'
        f'  <Choices name="{LS_CHOICES}" toName="{LS_IMAGE}" choice="multiple" '
        f'showInline="true">\n{choices}\n  </Choices>\n</View>\n'
    )


def config_location(config: ExportConfig) -> str:
    if config.config_out:
        return config.config_out
    stem = config.output[:-5] if config.output.endswith(".json") else config.output
    return stem + ".xml"


def write_label_studio(exported: Exported, config: ExportConfig) -> dict[str, str]:
    xml_out = config_location(config)
    if xml_out == config.output:
        raise ConfigError(f"the tasks and the labeling config would both be {xml_out}")
    m = exported.labels.manifest
    version = f"cdul {m.clip_model} {m.snippet_spec} zeta={m.zeta} {exported.vector}"
    tasks = []
    for row in exported.rows():
        # The task's score sorts the Data Manager: its least certain label (0 without
        # any), so the pre-annotations most worth a look come first.
        chosen = [s for c, s in zip(exported.classes, row.scores, strict=True) if c in row.labels]
        result = [
            {"from_name": LS_CHOICES, "to_name": LS_IMAGE, "type": "choices",
             "value": {"choices": row.labels}}
        ] if row.labels else []  # fmt: skip
        tasks.append(
            {
                "data": {LS_IMAGE: image_url(row.path, config), "cdul_id": row.image_id},
                "predictions": [
                    {"model_version": version, "score": min(chosen, default=0.0),
                     "result": result}
                ],
            }
        )  # fmt: skip
    return {config.output: _json_text(tasks), xml_out: labeling_config(exported.classes)}


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
    return {config.output: _json_text({"classes": exported.classes, "labels": targets})}


Writer = Callable[[Exported, "ExportConfig"], dict[str, str]]

#: --format -> writer. A new format is one entry here.
FORMATS: dict[str, Writer] = {
    "csv": write_csv,
    "json": write_json,
    "label-studio": write_label_studio,
    "fiftyone": write_fiftyone,
}


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


def dataset_spec(config: ExportConfig) -> str:
    """``--images``, else the dataset the run's manifest names."""
    if config.images:
        return config.images
    store = open_store(config.run)
    if not store.exists(MANIFEST):
        read_pseudo_labels(store)  # raises its "run the labeler first" error
    return LabelManifest.from_json(store.read_json(MANIFEST)).dataset


def load(config: ExportConfig) -> Exported:
    """Read the run and find each labeled image's path in its dataset."""
    from cdul.trainer.data import load_train_data

    # The trainer's own matching of labels to images by id (and of classes to a
    # dataset's): an export lists exactly the images `cdul train RUN SPEC` learns from.
    data = load_train_data(config.run, dataset_spec(config), None, config.vector, image_size=224)
    images = data.train
    paths = [_absolute(images.dataset.image_path(i)) for i in images.indices]
    return Exported(config.run, data.labels, config.vector, config.threshold, paths)


def export(config: ExportConfig) -> tuple[Exported, list[str]]:
    """Write the export; return what was exported and the locations written."""
    exported = load(config)
    files = FORMATS[config.format](exported, config)
    for location, text in files.items():
        store, key = location_store(location)
        store.write_text(key, text)
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
        f"{config.vector} >= {config.threshold} ({config.format})"
    )
    if config.format == "label-studio":
        print(
            "import the tasks into a project whose labeling config is the .xml; local images "
            "need LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true and a Local Files source "
            "storage under LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"
        )
    return 0
