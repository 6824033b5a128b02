"""``cdul label-import REVIEWED --run RUN -o NEW_RUN``: reviewed labels into a new run.

``REVIEWED`` is one of (the registry :data:`READERS`; ``--format``, else guessed from
the name, else from the contents):

``label-studio``
    Label Studio's JSON export of the tasks ``cdul label-export --format label-studio``
    wrote: a list of tasks, each with ``data.cdul_id`` and ``annotations`` (``result``:
    ``choices`` of the ``labels`` control, ``was_cancelled``). A task's latest
    non-cancelled annotation (by ``updated_at``, else ``created_at``, else order) is the
    reviewer's decision, even where it agrees with the prediction; a task without one
    keeps its pseudo label.
``csv``
    An edited copy of ``label-export``'s CSV: its ``image_id`` and ``labels`` columns.
    A CSV row carries no "reviewed" mark, so a row counts as reviewed when its labels
    differ from the run's at ``--threshold`` on ``--vector`` (what label-export wrote
    with the same options); other rows, and removed ones, keep their pseudo labels.

``NEW_RUN`` is the same pseudo-label artefact (one shard, merged, evaluated against
ground truth where the run has it): a reviewed image's ``--vector`` row (default
``final``, what ``cdul train`` learns from) is 1.0 for the chosen classes and 0.0 for
the others; every other row and vector is copied unchanged. Where the review came from
and what it changed go into the new run's manifest (``review``).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from cdul.core.errors import ConfigError
from cdul.core.evaluation import Evaluation
from cdul.core.pseudo_labels import (
    MANIFEST,
    LabelManifest,
    LabelReading,
    PseudoLabels,
    over_threshold,
    read_pseudo_labels,
    shard_counts,
    to_table,
    write_shard,
)
from cdul.core.settings import add_flags, from_args, setting
from cdul.core.storage import ObjectStore, open_store
from cdul.labeler.export import (
    CSV_COLUMNS,
    CSV_SEPARATOR,
    LS_CHOICES,
    location_store,
)
from cdul.labeler.merge import describe, merge_run
from cdul.labeler.version import code_version

#: A reviewed file's decisions: image id -> the classes the reviewer chose.
Decisions = dict[str, list[str]]


def _malformed(source: str, problem: str) -> ConfigError:
    return ConfigError(f"{source} is not a {problem}")


def _annotation_choices(annotation: dict[str, Any], where: str) -> list[str]:
    results = annotation.get("result", [])
    if not isinstance(results, list):
        raise ConfigError(f"{where}: 'result' is not a list")
    chosen: list[str] = []
    others = set()
    for item in results:
        if not isinstance(item, dict) or item.get("type") != "choices":
            continue
        if item.get("from_name") != LS_CHOICES:
            others.add(str(item.get("from_name")))
            continue
        choices = (item.get("value") or {}).get("choices")
        if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
            raise ConfigError(f"{where}: value.choices is not a list of class names")
        chosen += choices
    if others and not chosen:
        # A renamed control would otherwise read as "no class at all".
        raise ConfigError(
            f"{where}: choices come from {sorted(others)}, not the {LS_CHOICES!r} control of "
            "the labeling config label-export wrote"
        )
    return list(dict.fromkeys(chosen))


def read_label_studio(text: str, source: str) -> Decisions:
    """The decisions in a Label Studio JSON export (see the module docstring)."""
    try:
        tasks = json.loads(text)
    except json.JSONDecodeError as error:
        raise _malformed(source, f"Label Studio JSON export: {error}") from None
    if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
        raise _malformed(source, "Label Studio JSON export (a list of tasks)")
    decisions: Decisions = {}
    for number, task in enumerate(tasks):
        where = f"{source}: task {task.get('id', f'#{number}')}"
        data = task.get("data")
        image_id = data.get("cdul_id") if isinstance(data, dict) else None
        if not isinstance(image_id, str):
            raise ConfigError(f"{where} has no data.cdul_id (not a task label-export wrote)")
        annotations = task.get("annotations") or []
        if not isinstance(annotations, list) or not all(isinstance(a, dict) for a in annotations):
            raise ConfigError(f"{where}: 'annotations' is not a list of annotations")
        kept = [(a.get("updated_at") or a.get("created_at") or "", k, a)
                for k, a in enumerate(annotations) if not a.get("was_cancelled")]  # fmt: skip
        if not kept:
            continue
        if image_id in decisions:
            raise ConfigError(f"{where}: image {image_id!r} is annotated in two tasks")
        decisions[image_id] = _annotation_choices(max(kept, key=lambda t: t[:2])[2], where)
    return decisions


def read_csv(text: str, source: str) -> Decisions:
    """Every row of an edited label-export CSV (filtered to changed rows later)."""
    id_column, labels_column = CSV_COLUMNS[0], CSV_COLUMNS[2]
    decisions: Decisions = {}
    try:
        reader = csv.DictReader(io.StringIO(text))
        needed = [c for c in (id_column, labels_column) if c not in (reader.fieldnames or [])]
        if needed:
            raise _malformed(source, f"label-export CSV: no {', '.join(needed)} column")
        for number, row in enumerate(reader, start=2):
            image_id, labels = row[id_column], row[labels_column] or ""
            if not image_id:
                raise ConfigError(f"{source}: line {number} has no image_id")
            if image_id in decisions:
                raise ConfigError(f"{source}: image {image_id!r} has two rows")
            names = [name.strip() for name in labels.split(CSV_SEPARATOR)]
            decisions[image_id] = list(dict.fromkeys(name for name in names if name))
    except csv.Error as error:
        raise _malformed(source, f"readable CSV: {error}") from None
    return decisions


@dataclass(frozen=True)
class Reader:
    read: Callable[[str, str], Decisions]
    explicit: bool
    """Each decision is a reviewer's (an annotation); otherwise only those that differ
    from the run's labels count as reviewed (a CSV row has no "reviewed" mark)."""


#: --format -> reader. A new review source is one entry here.
READERS: dict[str, Reader] = {
    "label-studio": Reader(read_label_studio, explicit=True),
    "csv": Reader(read_csv, explicit=False),
}


@dataclass(frozen=True, kw_only=True)
class ImportConfig(LabelReading):
    """``--vector``: the vector the review replaces (train on it: ``cdul train
    --train-on``); ``--threshold``: the one label-export used (a CSV row counts as
    reviewed when its labels differ from the run's at it; changes are counted against it)."""

    reviewed: str
    run: str
    output: str
    format: str | None = setting(
        None, "the reviewed file's format (default: from its name, else its contents)",
        choices=tuple(READERS),
    )  # fmt: skip


def guess_format(name: str, text: str) -> str:
    lowered = name.lower()
    if lowered.endswith(".csv"):
        return "csv"
    if lowered.endswith(".json"):
        return "label-studio"
    return "label-studio" if text.lstrip().startswith("[") else "csv"


@dataclass
class Review:
    """The reviewed vector and what changed, against the run's labels at the threshold."""

    vector: torch.Tensor
    reviewed: list[str]
    changed: list[dict[str, Any]]

    def counts(self) -> dict[str, int]:
        return {
            "images_reviewed": len(self.reviewed),
            "images_changed": len(self.changed),
            "labels_added": sum(len(c["added"]) for c in self.changed),
            "labels_removed": sum(len(c["removed"]) for c in self.changed),
        }


def apply_review(
    labels: PseudoLabels, decisions: Decisions, config: ImportConfig, explicit: bool
) -> Review:
    """The run's ``config.vector`` with the decisions in; refuses unknown ids or classes."""
    source = config.reviewed
    position = {image_id: i for i, image_id in enumerate(labels.ids)}
    strangers = [image_id for image_id in decisions if image_id not in position]
    if strangers:
        raise ConfigError(
            f"{source}: {len(strangers)} image id(s) are not in {config.run} "
            f"(e.g. {strangers[0]!r}): was it exported from this run?"
        )
    index = {c: j for j, c in enumerate(labels.classes)}
    unknown = sorted({c for chosen in decisions.values() for c in chosen if c not in index})
    if unknown:
        raise ConfigError(
            f"{source}: unknown class name(s) {unknown}; {config.run} has {labels.classes}"
        )
    before = over_threshold(labels[config.vector], config.threshold)
    vector = labels[config.vector].clone()
    reviewed, changed = [], []
    for image_id, chosen in decisions.items():
        i = position[image_id]
        had = {labels.classes[j] for j in before[i].nonzero()[0]}
        if not explicit and set(chosen) == had:
            continue
        vector[i] = 0.0
        vector[i, [index[c] for c in chosen]] = 1.0
        reviewed.append(image_id)
        if set(chosen) != had:
            added = [c for c in chosen if c not in had]
            removed = [c for c in labels.classes if c in had and c not in chosen]
            changed.append({"image_id": image_id, "added": added, "removed": removed})
    return Review(vector, reviewed, changed)


def open_runs(config: ImportConfig) -> tuple[ObjectStore, ObjectStore]:
    """The reviewed run's store and the new one's; refuses a new run that is the
    reviewed one or holds labels already, before anything is written."""
    source, target = open_store(config.run), open_store(config.output, create_bucket=True)
    if source.uri.rstrip("/") == target.uri.rstrip("/"):
        raise ConfigError(f"-o {config.output} is the run being reviewed: give a new run URI")
    if target.exists(MANIFEST) or shard_counts(target):
        raise ConfigError(f"{target.uri} already holds pseudo labels: give a new run URI")
    return source, target


class Imported(NamedTuple):
    store: ObjectStore
    labels: PseudoLabels
    evaluation: dict[str, Evaluation] | None
    review: Review
    record: dict[str, Any]


def import_review(config: ImportConfig) -> Imported:
    """Read, check, apply and write the review into the new run."""
    source, target = open_runs(config)
    store, key = location_store(config.reviewed)
    raw = store.read_bytes(key)
    try:
        text = raw.decode("utf-8-sig")  # a spreadsheet's CSV may start with a BOM
    except UnicodeDecodeError:
        raise _malformed(config.reviewed, "UTF-8 text file") from None
    name = config.format or guess_format(key, text)
    reader = READERS[name]
    labels = read_pseudo_labels(source)
    review = apply_review(labels, reader.read(text, config.reviewed), config, reader.explicit)
    now = datetime.datetime.now(datetime.UTC).isoformat()
    record = {
        "source": store.uri_for(key), "format": name, "run": source.uri,
        "vector": config.vector, "threshold": config.threshold, "created": now,
        **review.counts(), "reviewed": review.reviewed, "changed": review.changed,
    }  # fmt: skip
    manifest = LabelManifest.from_json(
        {
            **labels.manifest.to_json(),
            "num_shards": 1, "shard_index": 0, "shards": [], "evaluation": None,
            "code_version": code_version(), "created": now, "review": record,
            # The final labels copied are debiased already (if the recipe debiases).
            "recipe": {**(labels.manifest.recipe or {}), "debias": "none"}, "class_bias": None,
        }
    )  # fmt: skip
    vectors = {**labels.vectors, config.vector: review.vector}
    write_shard(target, manifest, to_table(labels.ids, vectors, labels.ground_truth))
    merged, evaluation = merge_run(target)  # evaluation, then the manifest, last
    return Imported(target, merged, evaluation, review, record)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("reviewed", help="the reviewed file (Label Studio JSON export or CSV)")
    parser.add_argument("--run", required=True, help="the run the review was exported from")
    parser.add_argument("-o", "--output", required=True, help="the new run URI to write")
    add_flags(parser, ImportConfig)


def run(args: argparse.Namespace) -> int:
    config = from_args(ImportConfig, args)
    result = import_review(config)
    counts = result.review.counts()
    print(describe(result.store, result.labels, result.evaluation))
    print(
        f"{config.output}: {counts['images_reviewed']} image(s) reviewed "
        f"({result.record['format']}), "
        f"{counts['images_changed']} changed: +{counts['labels_added']} "
        f"-{counts['labels_removed']} labels on {config.vector}; train on it with "
        f"cdul train {config.output} IMAGES --train-on {config.vector}"
    )
    return 0
