"""``cdul label-queue RUN``: the review queue, the labels most likely wrong first.

    cdul label-queue file:///runs/demo            # RUN/review/queue.csv
    cdul cross-fit file:///runs/demo IMAGES ...   # optional: out-of-sample evidence too

Every ``(image, class)`` pair of the run gets a review priority from evidence that needs
no ground truth (:mod:`cdul.core.method.review`): its distance to the class's threshold,
how far the run's global and snippet evidence each side against the label, and, where
``cdul cross-fit`` wrote out-of-fold predictions (``RUN/review/out_of_fold.parquet``),
how far a classifier that never saw the image's label disagrees with it. Images a
reviewer has decided (``RUN/reviews/``) leave the queue.

``RUN/review/queue.csv`` (or ``-o``): ``rank, image_id, class, label, score, threshold,
priority, review_score`` in priority order, ``--top N`` rows (default all). The same
priorities give each exported image its ``review_score`` (lowest first: its most
doubtful label), the gallery's "review first" page and the Label Studio backend's
prediction scores, so the Data Manager's sort by score is this queue.
"""

from __future__ import annotations

import argparse
import csv
import io
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from cdul.core.errors import ConfigError
from cdul.core.method import review
from cdul.core.pseudo_labels import PseudoLabels, read_pseudo_labels
from cdul.core.settings import add_flags, from_args, setting
from cdul.core.storage import ObjectStore, open_location, open_store
from cdul.labels import out_of_fold
from cdul.labels.reading import LabelReading, Thresholds, run_thresholds
from cdul.labels.reviews import read_reviews

#: Where label-queue writes by default, under the run.
QUEUE = "review/queue.csv"
#: The run's separate pieces of evidence (Eq. 2 and Eq. 6) the priority weighs.
EVIDENCE_VECTORS = ("global", "aggregate")


@dataclass(frozen=True)
class Priorities:
    """``(N, C)`` review priorities of a run's labels on one vector, and what went in."""

    values: torch.Tensor
    labels: torch.Tensor  # (N, C) booleans: the hard labels ranked
    thresholds: Thresholds
    terms: tuple[str, ...]  # which of distance / evidence / out-of-fold were used
    reviewed: frozenset[str]  # image ids a reviewer decided (not queued)

    @property
    def source(self) -> str:
        return " + ".join(self.terms)

    def image_scores(self) -> torch.Tensor:
        """``(N,)`` review scores in (0, 1), lowest first (:func:`review.review_score`
        of the image's most doubtful label)."""
        return review.review_score(review.image_priority(self.values))


def evidence_thresholds(labels: PseudoLabels) -> dict[str, torch.Tensor]:
    """The run's label-free thresholds of each of :data:`EVIDENCE_VECTORS`."""
    return {v: run_thresholds(labels, v).values for v in EVIDENCE_VECTORS}


def label_free_priority(
    vectors: Mapping[str, torch.Tensor], vector: str, thresholds: torch.Tensor,
    evidence: Mapping[str, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """The hard labels of ``vectors[vector]`` at ``thresholds`` and their priority from
    the terms every image has (``-d + e``; ``evidence``: :func:`evidence_thresholds`)."""
    scores = vectors[vector]
    hard = review.hard_labels(scores, thresholds)
    pieces = [(vectors[v], evidence[v]) for v in EVIDENCE_VECTORS]
    return hard, review.priority(review.distance(scores, thresholds), review.evidence(hard, pieces))


def priorities(
    labels: PseudoLabels, store: ObjectStore, reading: LabelReading | None = None
) -> Priorities:
    """The run's review priorities (see the module docstring)."""
    reading = reading or LabelReading()
    thresholds = reading.thresholds_for(labels)
    hard, total = label_free_priority(labels.vectors, reading.vector, thresholds.values,
                                      evidence_thresholds(labels))  # fmt: skip
    terms = ["threshold distance", "global and snippet evidence"]
    predictions = out_of_fold.read(store)
    if predictions is not None:
        aligned = predictions.aligned(list(labels.ids), store.uri_for(out_of_fold.OUT_OF_FOLD))
        total = total + review.against(hard, aligned.probabilities, aligned.thresholds)
        terms.append(f"out-of-fold classifier ({int(aligned.folds.max()) + 1} folds)")
    return Priorities(total, hard, thresholds, tuple(terms),
                      frozenset(read_reviews(store).decisions))  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class QueueConfig(LabelReading):
    run: str
    output: str | None = setting(None, "where to write the queue CSV (default: RUN/" + QUEUE + ")",
                                 flag="-o")  # fmt: skip
    top: int | None = setting(None, "write only the first N pairs", type=int, metavar="N")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.top is not None and self.top < 1:
            raise ConfigError(f"--top must be >= 1, got {self.top}")


def write_queue(config: QueueConfig) -> tuple[str, list[list[object]], Priorities]:
    store = open_store(config.run)
    labels = read_pseudo_labels(store)
    found = priorities(labels, store, config)
    scores = labels[config.vector]
    review_scores = review.review_score(found.values)
    rows: list[list[object]] = []
    for i, c in review.review_order(found.values).tolist():
        if labels.ids[i] in found.reviewed:
            continue
        rows.append([
            len(rows) + 1, labels.ids[i], labels.classes[c], int(found.labels[i, c]),
            f"{float(scores[i, c]):.6g}", found.thresholds.text(c),
            f"{float(found.values[i, c]):.6g}", f"{float(review_scores[i, c]):.6g}",
        ])  # fmt: skip
        if config.top is not None and len(rows) >= config.top:
            break
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["rank", "image_id", "class", "label", "score", "threshold", "priority",
                     "review_score"])  # fmt: skip
    writer.writerows(rows)
    target_store, key = open_location(config.output) if config.output else (store, QUEUE)
    target_store.write_text(key, text.getvalue())
    return target_store.uri_for(key), rows, found


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="the pseudo-label run URI (file://DIR or s3://BUCKET/RUN)")
    add_flags(parser, QueueConfig)


def run(args: argparse.Namespace) -> int:
    config = from_args(QueueConfig, args)
    where, rows, found = write_queue(config)
    print(f"{where}: {len(rows)} (image, class) pairs, most likely wrong first; priority from "
          f"{found.source}; {len(found.reviewed)} reviewed image(s) left out")  # fmt: skip
    for row in rows[:10]:
        rank, image_id, name, label, score, threshold = row[:6]
        print(f"  {rank:>4}  {image_id}  {name}: label {label} (score {score}, threshold "
              f"{threshold})")  # fmt: skip
    return 0
