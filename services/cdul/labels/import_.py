"""``cdul label-import REVIEWED --run RUN -o NEW_RUN``: reviewed labels into a new run.

``REVIEWED`` is in one of the formats with a reader (:data:`cdul.labels.formats.READABLE`:
``label-studio``, Label Studio's JSON export of the tasks ``cdul label-export --format
label-studio`` wrote, or ``csv``, an edited copy of label-export's CSV; each module
says how it is read); ``--format``, else guessed from the name, else from the contents.
A CSV row carries no "reviewed" mark, so a row counts as reviewed when its labels
differ from the run's at its thresholds on ``--vector`` (what label-export wrote with
the same options); other rows, and removed ones, keep their pseudo labels.

``NEW_RUN`` is the same pseudo-label artefact (one shard, merged, evaluated against
ground truth where the run has it): a reviewed image's ``--vector`` row (default
``final``, what ``cdul train`` learns from) is 1.0 for the chosen classes and 0.0 for
the others; every other row and vector is copied unchanged. Where the review came from
and what it changed go into the new run's manifest (``review``).
"""

from __future__ import annotations

import argparse
import datetime
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from cdul.core.errors import ConfigError
from cdul.core.evaluation import Evaluation
from cdul.core.pseudo_labels import (
    MANIFEST,
    LabelManifest,
    PseudoLabels,
    read_pseudo_labels,
    shard_counts,
    to_table,
    write_shard,
)
from cdul.core.settings import add_flags, from_args, setting
from cdul.core.storage import ObjectStore, open_location, open_store
from cdul.core.version import code_version
from cdul.labels.formats import READABLE, Decisions, guess_format
from cdul.labels.merge import describe, merge_run
from cdul.labels.reading import LabelReading, Thresholds, over_threshold


@dataclass(frozen=True, kw_only=True)
class ImportConfig(LabelReading):
    """``--vector``: the vector the review replaces (train on it: ``cdul train
    --train-on``); the thresholds (the run's label-free ones, ``--threshold`` or
    ``--thresholds``): those label-export used (a CSV row counts as reviewed when its
    labels differ from the run's at them; changes are counted against them)."""

    reviewed: str
    run: str
    output: str
    format: str | None = setting(
        None, "the reviewed file's format (default: from its name, else its contents)",
        choices=tuple(READABLE),
    )  # fmt: skip


@dataclass
class Review:
    """The reviewed vector and what changed, against the run's labels at ``thresholds``."""

    vector: torch.Tensor
    reviewed: list[str]
    changed: list[dict[str, Any]]
    thresholds: Thresholds

    def counts(self) -> dict[str, int]:
        return {
            "images_reviewed": len(self.reviewed),
            "images_changed": len(self.changed),
            "labels_added": sum(len(c["added"]) for c in self.changed),
            "labels_removed": sum(len(c["removed"]) for c in self.changed),
        }


def apply_review(
    labels: PseudoLabels, decisions: Decisions, config: ImportConfig, marked: bool
) -> Review:
    """The run's ``config.vector`` with the decisions in; refuses unknown ids or classes.
    ``marked``: each decision is a reviewer's; otherwise only those that change a row's
    labels count as reviewed."""
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
    thresholds = config.thresholds_for(labels)
    before = over_threshold(labels[config.vector], thresholds.values)
    vector = labels[config.vector].clone()
    reviewed, changed = [], []
    for image_id, chosen in decisions.items():
        i = position[image_id]
        had = {labels.classes[j] for j in before[i].nonzero()[0]}
        if not marked and set(chosen) == had:
            continue
        vector[i] = 0.0
        vector[i, [index[c] for c in chosen]] = 1.0
        reviewed.append(image_id)
        if set(chosen) != had:
            added = [c for c in chosen if c not in had]
            removed = [c for c in labels.classes if c in had and c not in chosen]
            changed.append({"image_id": image_id, "added": added, "removed": removed})
    return Review(vector, reviewed, changed, thresholds)


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
    store, key = open_location(config.reviewed)
    raw = store.read_bytes(key)
    try:
        text = raw.decode("utf-8-sig")  # a spreadsheet's CSV may start with a BOM
    except UnicodeDecodeError:
        raise ConfigError(f"{config.reviewed} is not a UTF-8 text file") from None
    fmt = READABLE[config.format] if config.format else guess_format(key, text)
    assert fmt.read is not None  # READABLE holds the formats with a reader
    name = fmt.name
    labels = read_pseudo_labels(source)
    review = apply_review(labels, fmt.read(text, config.reviewed), config, fmt.reviewed)
    now = datetime.datetime.now(datetime.UTC).isoformat()
    record = {
        "source": store.uri_for(key), "format": name, "run": source.uri,
        "vector": config.vector, "created": now,
        "thresholds": review.thresholds.to_json(list(labels.classes)),
        "threshold_source": review.thresholds.source,
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
