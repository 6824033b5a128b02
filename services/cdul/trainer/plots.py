"""Training curves as a PNG, like the seed study's Fig. 1: mAP of the pseudo labels and
of the classifier on validation over epochs (plus train mAP), and the loss."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on a job's node
import matplotlib.pyplot as plt

SERIES = (
    ("pseudo_label_map", "pseudo labels (vs ground truth)", "tab:orange"),
    ("val_map", "classifier, validation", "tab:blue"),
    ("train_map", "classifier, training images", "tab:green"),
)


def _points(history: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    pairs = [
        (row["epoch"], row[key])
        for row in history
        if row.get(key) is not None and not math.isnan(row[key])
    ]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def curves_png(history: Sequence[dict[str, Any]], title: str) -> bytes:
    """The figure as PNG bytes (two panels: mAP and loss over epochs)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    try:
        for key, label, colour in SERIES:
            xs, ys = _points(history, key)
            if xs:
                left.plot(xs, [100 * y for y in ys], marker="o", ms=3, label=label, color=colour)
        updates = [row["epoch"] for row in history if row.get("labels_updated")]
        for epoch in updates:
            left.axvline(epoch, color="grey", alpha=0.2, lw=1)
        left.set_xlabel("epoch")
        left.set_ylabel("mAP (%)")
        left.set_title("mAP (grey lines: pseudo-label updates)")
        left.grid(alpha=0.3)
        if left.lines:
            left.legend(fontsize=8)
        xs, ys = _points(history, "loss")
        right.plot(xs, ys, marker="o", ms=3, color="tab:red")
        right.set_xlabel("epoch")
        right.set_ylabel("KL loss")
        right.set_title("training loss")
        right.grid(alpha=0.3)
        fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
        return buffer.getvalue()
    finally:
        plt.close(fig)
