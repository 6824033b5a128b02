"""What every label file format shares: the exported scores a writer reads, the
decisions a reader returns, and a format's registry entry (:class:`LabelFormat`)."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from cdul.core.pseudo_labels import PseudoLabels
from cdul.labels.reading import Thresholds, over_threshold

if TYPE_CHECKING:
    from cdul.labels.export import ExportConfig

#: A reviewed file's decisions: image id -> the classes the reviewer chose.
Decisions = dict[str, list[str]]


def score_value(score: np.float32) -> float:
    """The shortest decimal that reads back as this float32 (0.3, not 0.30000001192…)."""
    return float(str(np.float32(score)))


class Row(NamedTuple):
    image_id: str
    path: str
    labels: list[str]
    scores: list[float]
    review_score: float  # lowest first: the image's most doubtful label (labels/queue.py)


@dataclass
class Exported:
    """A run's scores on one vector, with each image's path: what every writer reads."""

    run: str
    labels: PseudoLabels
    vector: str
    thresholds: Thresholds
    paths: list[str]
    review_scores: list[float]  # (N,) review scores (cdul.labels.queue), lowest first
    review_source: str  # the evidence they came from

    @property
    def classes(self) -> list[str]:
        return list(self.labels.classes)

    @functools.cached_property
    def scores(self) -> np.ndarray:
        return self.labels[self.vector].numpy().astype(np.float32)

    @functools.cached_property
    def chosen(self) -> np.ndarray:
        return over_threshold(self.labels[self.vector], self.thresholds.values)

    def rows(self) -> Iterator[Row]:
        classes = self.classes
        for i, image_id in enumerate(self.labels.ids):
            chosen = [classes[j] for j in np.flatnonzero(self.chosen[i])]
            scores = [score_value(s) for s in self.scores[i]]
            yield Row(image_id, self.paths[i], chosen, scores, self.review_scores[i])


#: (what to export, the command's settings) -> {location: text}
Writer = Callable[[Exported, "ExportConfig"], dict[str, str]]
#: (the file's text, its name for messages) -> decisions
Reader = Callable[[str, str], Decisions]


@dataclass(frozen=True)
class LabelFormat:
    """One label file format: its writer and, when reviewed files come back in it, its
    reader (``cdul label-import``)."""

    name: str
    write: Writer
    read: Reader | None = None
    reviewed: bool = False
    """Each decision the reader returns is a reviewer's (an annotation); otherwise only
    those that differ from the run's labels count as reviewed (a CSV row has no
    "reviewed" mark)."""
    suffix: str = ""
    """A file name ending that says a reviewed file is in this format."""
    looks_like: Callable[[str], bool] | None = None
    """Whether a file's text is in this format, where its name says nothing; None: the
    format a file is read as when no other one's test says yes."""


def absolute_path(path: str) -> str:
    """A local path made absolute; a URI (``s3://...``) as it is."""
    return path if "://" in path else os.path.abspath(path)
