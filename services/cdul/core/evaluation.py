"""Multi-label evaluation: macro mAP and per-class average precision; F1 of hard labels.

Per-class AP is computed with torchmetrics (``MultilabelAveragePrecision`` inside a
``ClasswiseWrapper``), so each class's number is the standard one. Edge cases:

- An image with no positive label simply contributes a negative to every class.
- A class with no positive image has no AP: recall is 0/0. torchmetrics (1.9) would
  report 0 for it and count that 0 in its macro mean, which makes a subset that lacks
  some class read lower than it is. Here its AP is undefined (NaN in
  :attr:`Evaluation.per_class`, ``null`` in JSON, ``-`` in tables), the macro mAP is
  the mean over the classes that have a positive image (as the VOC devkit's per-class
  table implies), and the left-out classes are listed in
  :attr:`Evaluation.classes_without_positives`. With no positive at all the mAP is
  undefined too (NaN).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torchmetrics.classification import MultilabelAveragePrecision
from torchmetrics.wrappers import ClasswiseWrapper


@dataclass(frozen=True)
class Evaluation:
    """Macro mAP over the classes with a positive image, and the AP of each class.

    An undefined AP (a class without positives; the mAP when no class has one) is NaN
    here and ``None`` in :meth:`to_dict`, since JSON has no NaN."""

    mean_ap: float
    per_class: dict[str, float]
    positives: dict[str, int]
    num_images: int
    classes_without_positives: tuple[str, ...] = field(default=())

    @property
    def classes_in_mean(self) -> int:
        """How many classes the macro mAP averages (those with a positive image)."""
        return len(self.per_class) - len(self.classes_without_positives)

    def to_dict(self) -> dict[str, object]:
        return {
            "mAP": _defined(self.mean_ap),
            "per_class_ap": {c: _defined(ap) for c, ap in self.per_class.items()},
            "positives": dict(self.positives),
            "num_images": self.num_images,
            "classes_in_mAP": self.classes_in_mean,
            "classes_without_positives": list(self.classes_without_positives),
            "note": NO_POSITIVE_NOTE,
        }


NO_POSITIVE_NOTE = (
    "a class with no positive image has no AP (null) and is left out of the macro mAP, "
    "which is the mean over the classes with a positive image"
)


def _defined(value: float) -> float | None:
    return None if math.isnan(value) else value


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
    counts = targets.sum(dim=0).tolist()
    positives = {name: int(n) for name, n in zip(classes, counts, strict=True)}
    # torchmetrics' 0 for a class without positives becomes NaN (undefined); + 0.0 turns
    # a -0 into 0.
    per_class = {
        name: float(per_class_tensors[f"ap_{name}"]) + 0.0 if positives[name] else math.nan
        for name in classes
    }
    defined = [per_class[name] for name in classes if positives[name]]
    return Evaluation(
        mean_ap=sum(defined) / len(defined) if defined else math.nan,
        per_class=per_class,
        positives=positives,
        num_images=int(scores.shape[0]),
        classes_without_positives=tuple(c for c in classes if positives[c] == 0),
    )


@dataclass(frozen=True)
class LabelF1:
    """Hard labels against ground truth: what a user of the labels gets, which mAP (a
    ranking measure) does not show. A class's F1 is ``2 TP / (2 TP + FP + FN)``,
    undefined (NaN, left out of the macro mean) for a class with neither a positive image
    nor a predicted label; micro-F1 pools every (image, class) pair."""

    macro_f1: float
    micro_f1: float
    labels_per_image: float
    truth_per_image: float
    per_class: dict[str, float]

    def to_dict(self) -> dict[str, object]:
        return {
            "macro_f1": _defined(self.macro_f1),
            "micro_f1": _defined(self.micro_f1),
            "labels_per_image": self.labels_per_image,
            "truth_per_image": self.truth_per_image,
            "per_class_f1": {c: _defined(f) for c, f in self.per_class.items()},
        }


def label_f1(predicted: torch.Tensor, targets: torch.Tensor, classes: Sequence[str]) -> LabelF1:
    """F1 of the boolean ``(N, C)`` labels ``predicted`` against multi-hot ``targets``."""
    classes = list(classes)
    _check_inputs(predicted.float(), targets, classes)
    hit, actual = predicted.bool(), targets > 0
    true_pos = (hit & actual).sum(0).double()
    wrong = (hit ^ actual).sum(0).double()  # false positives + false negatives
    per = torch.where(2 * true_pos + wrong > 0, 2 * true_pos / (2 * true_pos + wrong), math.nan)
    defined = per[~per.isnan()]
    pooled = 2 * true_pos.sum() + wrong.sum()
    return LabelF1(
        macro_f1=float(defined.mean()) if len(defined) else math.nan,
        micro_f1=float(2 * true_pos.sum() / pooled) if pooled > 0 else math.nan,
        labels_per_image=float(hit.sum(1).double().mean()),
        truth_per_image=float(actual.sum(1).double().mean()),
        per_class={c: float(f) for c, f in zip(classes, per.tolist(), strict=True)},
    )


def format_ap(value: float, digits: int = 3) -> str:
    """An AP or mAP with ``digits`` decimals; ``-`` when it is undefined (NaN)."""
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


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
            format_ap(results[n].per_class[c], digits).rjust(w)
            for n, w in zip(names, cols, strict=True)
        ]
        mark = " *" if c in first.classes_without_positives else ""
        lines.append("  ".join([c.ljust(width), str(first.positives[c]).rjust(5), *cells]) + mark)
    lines.append("-" * len(header))
    means = [
        format_ap(results[n].mean_ap, digits).rjust(w) for n, w in zip(names, cols, strict=True)
    ]
    lines.append("  ".join(["mAP".ljust(width), str(first.num_images).rjust(5), *means]))
    if first.classes_without_positives:
        lines.append(
            f"* no positive image: AP undefined; the mAP is the mean over the other "
            f"{first.classes_in_mean} of {len(classes)} classes"
        )
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
