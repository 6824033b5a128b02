"""The served classifier's per-class decision thresholds, chosen without ground truth.

The classifier learns the pseudo labels' soft scores, so its outputs live on their
scale (a class present in an image often scores 0.2, not 0.9) and one threshold of 0.5
labels almost nothing. Each class gets its own threshold instead: the one whose labels
on the training images best agree (F1) with the run's hard pseudo labels, i.e. the
trained-on vector at the run's label-free per-class thresholds
(:func:`cdul.labels.reading.run_thresholds`), from one eval-mode pass over the training
images (:func:`cdul.core.method.thresholds.calibrated`). No ground truth is read; the
choice among the alternatives measured is in the README (benchmarks/hard_labels.py).

With ``--val`` ground truth the trainer also reports the labels these thresholds give on
it (macro/micro F1, labels per image) beside the best per-class thresholds that ground
truth would pick: how far the label-free choice is from the ceiling.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from cdul.core.evaluation import LabelF1, label_f1
from cdul.core.method.thresholds import calibrated
from cdul.core.pseudo_labels import PseudoLabels
from cdul.core.thresholds_file import thresholds_to_json
from cdul.labels.reading import over_threshold, run_thresholds

log = logging.getLogger("cdul.trainer")


@dataclass(frozen=True)
class DecisionThresholds:
    """Per-class thresholds ``(C,)`` (infinity: never a label) and how they were chosen."""

    values: torch.Tensor
    source: str

    def for_config(self) -> tuple[float | None, ...]:
        """As the classifier config stores them: float32-exact decimals, None = never."""
        return tuple(thresholds_to_json(self.values))


def hard_pseudo_labels(labels: PseudoLabels, vector: str) -> tuple[torch.Tensor, str]:
    """``(N, C)`` booleans: the run's labels on ``vector`` at its label-free thresholds."""
    thresholds = run_thresholds(labels, vector)
    return torch.from_numpy(over_threshold(labels[vector], thresholds.values)), thresholds.source


def label_free(
    train_probabilities: torch.Tensor, hard: torch.Tensor, hard_source: str, vector: str
) -> DecisionThresholds:
    """Each class's best-F1 threshold of the outputs on the training images against the
    hard pseudo labels (a class with none never fires)."""
    source = (f"label-free: each class's best F1 on the training images against the hard "
              f"pseudo labels ({vector} at {hard_source} thresholds)")  # fmt: skip
    return DecisionThresholds(calibrated(train_probabilities, hard), source)


def one_for_all(threshold: float, classes: int) -> DecisionThresholds:
    return DecisionThresholds(torch.full((classes,), float(threshold)), f"--threshold {threshold}")


@dataclass(frozen=True)
class ValReport:
    """The labels on the validation set at the chosen thresholds and at the best ones
    its ground truth would pick (the ceiling; not label-free)."""

    chosen: LabelF1
    best: LabelF1
    best_thresholds: torch.Tensor

    def to_dict(self) -> dict[str, object]:
        return {"chosen": self.chosen.to_dict(), "best": self.best.to_dict(),
                "best_thresholds": thresholds_to_json(self.best_thresholds)}  # fmt: skip


def val_report(
    probabilities: torch.Tensor, truth: torch.Tensor, thresholds: torch.Tensor, classes: list[str]
) -> ValReport:
    chosen = torch.from_numpy(over_threshold(probabilities, thresholds))
    best_thresholds = calibrated(probabilities, truth)
    best = torch.from_numpy(over_threshold(probabilities, best_thresholds))
    return ValReport(label_f1(chosen, truth, classes), label_f1(best, truth, classes),
                     best_thresholds)  # fmt: skip


def val_metrics(
    probabilities: torch.Tensor,
    truth: torch.Tensor | None,
    thresholds: torch.Tensor,
    classes: list[str],
) -> dict[str, float]:
    """An epoch's metrics of its labels on --val (none without ground truth)."""
    if truth is None:
        return {}
    f1 = val_report(probabilities, truth, thresholds, classes).chosen
    return {"val_macro_f1": f1.macro_f1, "val_micro_f1": f1.micro_f1,
            "val_labels_per_image": f1.labels_per_image}  # fmt: skip


def describe(
    chosen: DecisionThresholds, classes: list[str], report: ValReport | None
) -> dict[str, object]:
    """Log the choice (and, with a report, how it does on --val); the record stored."""
    shown = ", ".join(f"{c} {'never' if math.isinf(t) else f'{t:.3f}'}"
                      for c, t in zip(classes, chosen.values.tolist(), strict=True))  # fmt: skip
    log.info("decision thresholds (%s): %s", chosen.source, shown)
    record: dict[str, object] = {"classes": classes, "source": chosen.source,
                                 "thresholds": list(chosen.for_config())}  # fmt: skip
    if report is not None:
        record["val"] = report.to_dict()
        log.info(
            "on --val: macro-F1 %.3f, micro-F1 %.3f, %.2f labels per image (truth %.2f); the "
            "best thresholds its ground truth would pick: macro-F1 %.3f",
            report.chosen.macro_f1, report.chosen.micro_f1, report.chosen.labels_per_image,
            report.chosen.truth_per_image, report.best.macro_f1,
        )  # fmt: skip
    return record
