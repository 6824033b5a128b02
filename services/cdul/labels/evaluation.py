"""Evaluation of pseudo labels against ground truth, stored beside them.

For each of ``global``, ``aggregate`` and ``final``: the macro mAP and per-class AP
(:class:`~cdul.core.evaluation.Evaluation`, a ranking measure), and the F1 of the hard
labels a user gets (:class:`~cdul.core.evaluation.LabelF1`) at the run's label-free
thresholds, next to the ceiling: per-class thresholds chosen with the ground truth.

``pseudo_labels/evaluation.json`` holds, per vector, :meth:`Evaluation.to_dict` plus
``labels`` and ``ceiling`` (each :meth:`LabelF1.to_dict`, the thresholds named); the
same goes into the merged manifest's ``evaluation``. ``pseudo_labels/evaluation.csv``
is one row per class (plus a ``mean`` row) with each vector's AP and F1, for
spreadsheets; an undefined value is ``-`` there and ``null`` in the JSON.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

import torch

from cdul.core.evaluation import Evaluation, LabelF1, evaluate, format_ap, format_table, label_f1
from cdul.core.method.thresholds import calibrated
from cdul.core.pseudo_labels import EVALUATION_CSV, EVALUATION_JSON, LABEL_VECTORS, PseudoLabels
from cdul.core.storage import ObjectStore
from cdul.labels.reading import over_threshold, run_thresholds

CEILING = "per-class thresholds chosen with the ground truth (the ceiling)"


@dataclass(frozen=True)
class RunEvaluation:
    """Every label vector's ranking (mAP) and hard-label (F1) quality."""

    ranking: dict[str, Evaluation]
    labels: dict[str, LabelF1]
    """At the run's label-free thresholds (:attr:`thresholds`)."""
    ceiling: dict[str, LabelF1]
    thresholds: str

    def to_dict(self) -> dict[str, object]:
        return {
            name: {
                **self.ranking[name].to_dict(),
                "labels": {"thresholds": self.thresholds, **self.labels[name].to_dict()},
                "ceiling": {"thresholds": CEILING, **self.ceiling[name].to_dict()},
            }
            for name in self.ranking
        }


def evaluate_labels(labels: PseudoLabels) -> RunEvaluation | None:
    """mAP, per-class AP and F1 of each vector; None without ground truth or images."""
    truth = labels.ground_truth
    if truth is None or len(labels) == 0:
        return None
    ranking, hard, ceiling, source = {}, {}, {}, ""
    for name in LABEL_VECTORS:
        scores = labels[name]
        ranking[name] = evaluate(scores, truth, labels.classes)
        thresholds = run_thresholds(labels, name)
        source = thresholds.source
        chosen = torch.from_numpy(over_threshold(scores, thresholds.values))
        hard[name] = label_f1(chosen, truth, labels.classes)
        best = torch.from_numpy(over_threshold(scores, calibrated(scores, truth)))
        ceiling[name] = label_f1(best, truth, labels.classes)
    return RunEvaluation(ranking, hard, ceiling, source)


def to_csv(results: dict[str, Evaluation], f1: dict[str, LabelF1] | None = None) -> str:
    names = list(results)
    first = results[names[0]]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    f1_names = [f"{n}_f1" for n in names] if f1 else []
    writer.writerow(["class", "positives", *names, *f1_names])
    for c in first.per_class:
        f1_cells = [format_ap(f1[n].per_class[c], 6) for n in names] if f1 else []
        writer.writerow(
            [c, first.positives[c], *(format_ap(results[n].per_class[c], 6) for n in names),
             *f1_cells]
        )  # fmt: skip
    f1_means = [format_ap(f1[n].macro_f1, 6) for n in names] if f1 else []
    writer.writerow(
        ["mAP", first.num_images, *(format_ap(results[n].mean_ap, 6) for n in names), *f1_means]
    )
    return out.getvalue()


def store_evaluation(store: ObjectStore, results: RunEvaluation) -> dict[str, object]:
    """Write evaluation.json and evaluation.csv; return what goes into the manifest."""
    payload = results.to_dict()
    store.write_json(EVALUATION_JSON, payload)
    store.write_text(EVALUATION_CSV, to_csv(results.ranking, results.labels))
    return payload


def table(results: RunEvaluation) -> str:
    """The per-class AP table, then each vector's labels at the label-free thresholds."""
    lines = [format_table(results.ranking), "", f"labels at {results.thresholds} thresholds:"]
    width = max(len(n) for n in results.labels)
    for name, f1 in results.labels.items():
        best = results.ceiling[name]
        lines.append(
            f"  {name:<{width}}  macro-F1 {format_ap(f1.macro_f1)}  micro-F1 "
            f"{format_ap(f1.micro_f1)}  labels/image {f1.labels_per_image:.2f} "
            f"(truth {f1.truth_per_image:.2f})  | ceiling macro-F1 {format_ap(best.macro_f1)}"
        )
    lines.append(f"(ceiling: {CEILING})")
    return "\n".join(lines)
