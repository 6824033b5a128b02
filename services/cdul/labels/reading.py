"""Reading a run's scores as labels: the one rule every tool uses.

:class:`LabelReading` is the settings (which stored vector, which thresholds) that the
export, the review import, the gallery and the report share; :func:`over_threshold` is
the one comparison of scores with thresholds; :func:`relabel` recomputes a run's labels
with another recipe from what it stores.

Thresholds are per class. By default they are the run's own label-free ones (chosen at
merge from the scores alone, :mod:`cdul.core.method.thresholds`, and stored in the
manifest); ``--threshold T`` puts one threshold on every class, ``--thresholds FILE``
reads a user's per-class file: JSON ``{"class": threshold, ...}`` (``null``: never a
label) or CSV ``class,threshold`` lines (an optional header; an empty threshold: never).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from cdul.core.errors import ConfigError
from cdul.core.method.recipes import LabelRecipe, debias
from cdul.core.method.thresholds import DEFAULT_RULE, RULES
from cdul.core.pseudo_labels import LABEL_VECTORS, PseudoLabels
from cdul.core.settings import setting
from cdul.core.thresholds_file import read_thresholds_file, thresholds_from_json, thresholds_to_json


@dataclass(frozen=True)
class Thresholds:
    """Per-class decision thresholds ``(C,)`` (infinity: never a label), and where they
    came from, for every report that shows labels."""

    values: torch.Tensor
    source: str

    def text(self, c: int) -> str:
        value = float(self.values[c])
        return "never" if math.isinf(value) else f"{value:.3g}"

    def to_json(self, classes: list[str]) -> dict[str, float | None]:
        return dict(zip(classes, thresholds_to_json(self.values), strict=True))


def label_free_thresholds(scores: torch.Tensor, rule: str = DEFAULT_RULE) -> torch.Tensor:
    """``(C,)``: the label-free rule's thresholds of ``(N, C)`` scores (none for no images)."""
    if scores.shape[0] == 0:
        return torch.full((scores.shape[1],), math.inf)
    return RULES[rule](scores)


def run_thresholds(labels: PseudoLabels, vector: str) -> Thresholds:
    """The run's label-free thresholds of ``vector``: stored at merge, or (a run merged
    by an older version) computed now by the same rule."""
    m = labels.manifest
    stored = (m.thresholds or {}).get(vector)
    if stored is not None and len(stored) == len(labels.classes):
        values = thresholds_from_json(stored)
        return Thresholds(values, f"the run's label-free ({m.threshold_rule})")
    values = label_free_thresholds(labels[vector])
    return Thresholds(values, f"label-free ({DEFAULT_RULE}, computed now)")


@dataclass(frozen=True, kw_only=True)
class LabelReading:
    """Which stored vector is read as labels, and at which thresholds: the settings every
    command that turns scores into labels shares (export, review import, gallery, report)."""

    vector: str = setting("final", "the stored pseudo-label vector", choices=LABEL_VECTORS)
    threshold: float | None = setting(
        None, "one threshold for every class: a class is a label when its score is >= it "
        "(default: the run's label-free per-class thresholds)", type=float,
    )  # fmt: skip
    thresholds: str | None = setting(
        None, "per-class thresholds from a file: JSON {class: threshold} or CSV "
        "class,threshold lines", metavar="FILE",
    )  # fmt: skip

    def __post_init__(self) -> None:
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"--threshold must be within [0, 1], got {self.threshold}")
        if self.threshold is not None and self.thresholds is not None:
            raise ConfigError("give --threshold or --thresholds, not both")

    def thresholds_for(self, labels: PseudoLabels) -> Thresholds:
        """The thresholds these settings mean for ``labels``."""
        width = len(labels.classes)
        if self.threshold is not None:
            values = torch.full((width,), float(self.threshold))
            return Thresholds(values, f"--threshold {self.threshold:g}")
        if self.thresholds is not None:
            values = read_thresholds_file(self.thresholds, list(labels.classes))
            return Thresholds(values, f"--thresholds {self.thresholds}")
        return run_thresholds(labels, self.vector)


def over_threshold(scores: torch.Tensor, thresholds: float | torch.Tensor) -> np.ndarray:
    """``(N, C)`` booleans: which scores are labels at ``thresholds`` (one for every class,
    or ``(C,)``; the one rule of the export, the review import, the gallery and the
    report). A score equal to its threshold counts, and thresholds are compared as
    float32 too, so "0.3" in a file means the stored 0.3; infinity never fires."""
    limit = thresholds.numpy() if isinstance(thresholds, torch.Tensor) else thresholds
    return scores.numpy().astype(np.float32) >= np.asarray(limit, dtype=np.float32)


def relabel(labels: PseudoLabels, recipe: LabelRecipe) -> dict[str, torch.Tensor]:
    """``aggregate`` and ``final`` again with another recipe, from what the run stores (no
    CLIP call): alpha and beta where the rule needs no more, else the stored cosines."""
    glob, snippets, valid = labels["global"], None, None
    if recipe.needs_snippets:
        if labels.cosines is None or labels.manifest.logit_scale is None:
            raise ConfigError(
                f"recipe {recipe} needs every snippet's scores, and {labels.manifest.dataset}'s "
                "run stores none (labeled with --no-store-cosines, or by an older labeler)"
            )
        glob, snippets, valid = labels.cosines.padded(labels.manifest.logit_scale)
    vectors = recipe.apply(glob, labels["alpha"], labels["beta"], snippets, valid)
    bias = recipe.bias(vectors["final"])
    if bias is not None:
        vectors["final"] = debias(vectors["final"], bias)
    return vectors
