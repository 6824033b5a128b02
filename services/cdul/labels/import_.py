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
from cdul.labels.formats import READABLE, guess_format
from cdul.labels.merge import describe, merge_run
from cdul.labels.reading import LabelReading
from cdul.labels.reviews import Review, apply_decisions


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
    review = apply_decisions(
        labels,
        fmt.read(text, config.reviewed),
        config.vector,
        config.thresholds_for(labels),
        marked=fmt.reviewed,
        source=config.reviewed,
    )
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
