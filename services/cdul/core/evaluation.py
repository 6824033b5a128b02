"""Multi-label evaluation: macro mAP and per-class average precision.

Computed with torchmetrics (``MultilabelAveragePrecision`` inside a
``ClasswiseWrapper``), so the numbers are the standard ones. Edge cases, as
torchmetrics documents and implements them (torchmetrics 1.9):

- An image with no positive label simply contributes a negative to every class.
- A class with no positive image has an undefined recall; torchmetrics sets it to one
  for every threshold, which yields an AP of 0 for that class, and the macro average
  *includes* that 0. This module keeps that behaviour (so numbers match torchmetrics),
  silences the library's warning, and instead lists such classes in
  :attr:`Evaluation.classes_without_positives` and in the printed table, so a reader
  sees why a macro mAP is low on a small evaluation set.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torchmetrics.classification import MultilabelAveragePrecision
from torchmetrics.wrappers import ClasswiseWrapper


@dataclass(frozen=True)
class Evaluation:
    """Macro mAP over all classes and the AP of each class."""

    mean_ap: float
    per_class: dict[str, float]
    positives: dict[str, int]
    num_images: int
    classes_without_positives: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, object]:
        return {
            "mAP": self.mean_ap,
            "per_class_ap": dict(self.per_class),
            "positives": dict(self.positives),
            "num_images": self.num_images,
            "classes_without_positives": list(self.classes_without_positives),
            "note": NO_POSITIVE_NOTE,
        }


NO_POSITIVE_NOTE = (
    "classes with no positive image get AP 0 (torchmetrics' convention) and count in the macro mAP"
)


def evaluate(scores: torch.Tensor, targets: torch.Tensor, classes: Sequence[str]) -> Evaluation:
    """AP per class and macro mAP of ``scores`` ``(N, C)`` against multi-hot ``targets``."""
    classes = list(classes)
    _check_inputs(scores, targets, classes)
    targets = targets.to(torch.long)
    metric = ClasswiseWrapper(
        MultilabelAveragePrecision(num_labels=len(classes), average=None),
        labels=classes,
        prefix="ap_",
    )
    with warnings.catch_warnings():
        # The "no positive samples" warning is replaced by classes_without_positives.
        warnings.filterwarnings("ignore", message=".*No positive samples.*")
        per_class_tensors = metric(scores.float(), targets)
    per_class = {name: float(per_class_tensors[f"ap_{name}"]) + 0.0 for name in classes}  # -0 -> 0
    counts = targets.sum(dim=0).tolist()
    positives = {name: int(n) for name, n in zip(classes, counts, strict=True)}
    return Evaluation(
        mean_ap=sum(per_class.values()) / len(classes),
        per_class=per_class,
        positives=positives,
        num_images=int(scores.shape[0]),
        classes_without_positives=tuple(c for c in classes if positives[c] == 0),
    )


#: Candidate decision thresholds for :func:`best_f1_threshold`: 0.05, 0.10, ..., 0.95.
THRESHOLD_GRID = tuple(round(step / 20, 2) for step in range(1, 20))


def best_f1_threshold(
    probabilities: torch.Tensor, targets: torch.Tensor, grid: Sequence[float] = THRESHOLD_GRID
) -> tuple[float, float]:
    """``(threshold, micro-F1)``: the one decision threshold for every class, from
    ``grid``, whose labels ``probabilities >= threshold`` have the best micro-F1
    (2 TP / (predicted positives + actual positives)) against multi-hot ``targets``;
    the first such threshold in ``grid`` on a tie (the lowest, for the default grid).
    Classifiers trained on soft pseudo labels give soft probabilities, so 0.5 is rarely
    the best choice."""
    if probabilities.dim() != 2 or probabilities.shape != targets.shape:
        raise ValueError(
            f"probabilities {tuple(probabilities.shape)} and targets {tuple(targets.shape)} "
            "must both be (images, classes)"
        )
    if not grid:
        raise ValueError("no candidate thresholds")
    actual = targets > 0
    best, best_f1 = float(grid[0]), -1.0
    for threshold in grid:
        predicted = probabilities >= threshold
        true_positives = float((predicted & actual).sum())
        f1 = 2 * true_positives / max(float(predicted.sum() + actual.sum()), 1.0)
        if f1 > best_f1:
            best, best_f1 = float(threshold), f1
    return best, best_f1


def format_table(results: dict[str, Evaluation], digits: int = 3) -> str:
    """A per-class AP table with one column per result (e.g. global / aggregate / final)."""
    if not results:
        raise ValueError("nothing to format: no evaluation results given")
    names = list(results)
    first = results[names[0]]
    classes = list(first.per_class)
    width = max(len("class"), *(len(c) for c in classes), len("mAP"))
    cols = [max(len(n), digits + 2) for n in names]
    header = "  ".join(
        [
            "class".ljust(width),
            "pos".rjust(5),
            *(n.rjust(w) for n, w in zip(names, cols, strict=True)),
        ]
    )
    lines = [header, "-" * len(header)]
    for c in classes:
        cells = [
            f"{results[n].per_class[c]:.{digits}f}".rjust(w)
            for n, w in zip(names, cols, strict=True)
        ]
        mark = " *" if c in first.classes_without_positives else ""
        lines.append("  ".join([c.ljust(width), str(first.positives[c]).rjust(5), *cells]) + mark)
    lines.append("-" * len(header))
    means = [f"{results[n].mean_ap:.{digits}f}".rjust(w) for n, w in zip(names, cols, strict=True)]
    lines.append("  ".join(["mAP".ljust(width), str(first.num_images).rjust(5), *means]))
    if first.classes_without_positives:
        lines.append(f"* no positive image: {NO_POSITIVE_NOTE}")
    return "\n".join(lines)


def _check_inputs(scores: torch.Tensor, targets: torch.Tensor, classes: list[str]) -> None:
    if not classes:
        raise ValueError("cannot evaluate against an empty label set (0 classes)")
    if len(set(classes)) != len(classes):
        raise ValueError(f"class names must be unique; got {classes}")
    if scores.dim() != 2 or scores.shape != targets.shape:
        raise ValueError(
            f"scores {tuple(scores.shape)} and targets {tuple(targets.shape)} must both be "
            "(images, classes)"
        )
    if scores.shape[1] != len(classes):
        raise ValueError(
            f"scores have {scores.shape[1]} columns but {len(classes)} classes were named"
        )
    if scores.shape[0] == 0:
        raise ValueError("cannot evaluate zero images")
    if not torch.isfinite(scores).all():
        raise ValueError("scores contain NaN or infinite values")
    if not ((targets == 0) | (targets == 1)).all():
        raise ValueError("targets must be multi-hot: every entry 0 or 1")
