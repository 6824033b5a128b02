"""Evaluation of pseudo labels against ground truth, stored beside them.

``pseudo_labels/evaluation.json`` holds, for each of ``global``, ``aggregate`` and
``final``, the macro mAP and per-class AP (:meth:`Evaluation.to_dict`); the same goes
into the merged manifest's ``evaluation``. ``pseudo_labels/evaluation.csv`` is one row
per class (plus a ``mAP`` row) with one column per vector, for spreadsheets; an
undefined AP (a class without a positive image) is ``-`` there and ``null`` in the JSON.
"""

from __future__ import annotations

import csv
import io

from cdul.core.evaluation import Evaluation, evaluate, format_ap, format_table
from cdul.core.pseudo_labels import EVALUATION_CSV, EVALUATION_JSON, LABEL_VECTORS, PseudoLabels
from cdul.core.storage import ObjectStore


def evaluate_labels(labels: PseudoLabels) -> dict[str, Evaluation] | None:
    """mAP and per-class AP of each vector; None without ground truth or images."""
    if labels.ground_truth is None or len(labels) == 0:
        return None
    truth = labels.ground_truth
    return {name: evaluate(labels[name], truth, labels.classes) for name in LABEL_VECTORS}


def to_csv(results: dict[str, Evaluation]) -> str:
    names = list(results)
    first = results[names[0]]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["class", "positives", *names])
    for c in first.per_class:
        writer.writerow(
            [c, first.positives[c], *(format_ap(results[n].per_class[c], 6) for n in names)]
        )
    writer.writerow(["mAP", first.num_images, *(format_ap(results[n].mean_ap, 6) for n in names)])
    return out.getvalue()


def store_evaluation(store: ObjectStore, results: dict[str, Evaluation]) -> dict[str, object]:
    """Write evaluation.json and evaluation.csv; return what goes into the manifest."""
    payload = {name: e.to_dict() for name, e in results.items()}
    store.write_json(EVALUATION_JSON, payload)
    store.write_text(EVALUATION_CSV, to_csv(results))
    return payload


def table(results: dict[str, Evaluation]) -> str:
    return format_table(results)
