"""Reading a run's scores as labels: the one rule every tool uses.

:class:`LabelReading` is the pair of settings (which stored vector, which threshold)
that the export, the review import, the gallery and the report share;
:func:`over_threshold` is the one comparison of scores with a threshold;
:func:`relabel` recomputes a run's labels with another recipe from what it stores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cdul.core.errors import ConfigError
from cdul.core.method.recipes import LabelRecipe, debias
from cdul.core.pseudo_labels import LABEL_VECTORS, PseudoLabels
from cdul.core.settings import setting


@dataclass(frozen=True, kw_only=True)
class LabelReading:
    """Which stored vector is read as labels, and at which threshold: the settings every
    command that turns scores into labels shares (export, review import, gallery, report)."""

    vector: str = setting("final", "the stored pseudo-label vector", choices=LABEL_VECTORS)
    threshold: float = setting(0.5, "a class is a label when its score is >= this")

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"--threshold must be within [0, 1], got {self.threshold}")


def over_threshold(scores: torch.Tensor, threshold: float) -> np.ndarray:
    """``(N, C)`` booleans: which scores are labels at ``threshold`` (the one rule of the
    export, the review import, the gallery and the report). A score equal to the
    threshold counts, and the threshold is compared as a float32 too, so "0.3" in a file
    means the stored 0.3."""
    return scores.numpy().astype(np.float32) >= np.float32(threshold)


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
