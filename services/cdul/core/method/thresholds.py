"""Decision thresholds: which scores become labels, chosen without ground truth.

A score matrix ``(N, C)`` (pseudo labels, or a classifier's sigmoid outputs) becomes
hard labels ``scores[:, c] >= t_c`` with one threshold per class. The rules here need
no ground truth; :func:`calibrated` (the best F1 against given targets) serves both the
ceiling measured with ground truth and calibration against label-free targets.

``otsu``
    Otsu's method (Otsu, IEEE Trans. SMC 1979), per class: the split of the class's
    sorted scores into a lower and an upper group with the largest between-group
    variance ``w0 * w1 * (mu0 - mu1)^2``; the threshold is the upper group's smallest
    score. Computed exactly over every split between distinct scores (no histogram).
    A class's scores are a mixture of the images that hold it and those that do not;
    Otsu finds the valley between them without knowing their share. One guard: when the
    upper group holds more than ``max_share`` of the images (default
    :data:`MAX_SHARE`), the class scores high nearly everywhere (the gallery's "fires on
    almost everything", a prompt CLIP matches to most images), so the valley found is
    below the images that hold it: the upper group is split again the same way until
    at most ``max_share`` of the images are labelled. In multi-label datasets a class
    is rarely in most images (COCO's most frequent, person, is in about 54%), hence 0.6.

A class whose scores are all equal has no split: its threshold is
:data:`NO_EVIDENCE` (infinity: it never fires; ``null`` in JSON), and
:func:`no_evidence` says which classes got it, so a report can name them.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

#: The threshold of a class without positive evidence: above every score, never fires.
NO_EVIDENCE = math.inf
#: Otsu's guard: the largest share of the images one class may label (see above).
MAX_SHARE = 0.6


def _check(scores: torch.Tensor) -> torch.Tensor:
    if scores.dim() != 2:
        raise ValueError(f"scores must be (images, classes); got {tuple(scores.shape)}")
    if scores.shape[0] == 0:
        raise ValueError("no images to choose thresholds from")
    if not bool(torch.isfinite(scores).all()):
        raise ValueError("scores hold NaN or infinite values")
    return scores.double()


def otsu_threshold(column: torch.Tensor) -> float:
    """Otsu's threshold of one class's scores ``(N,)`` (see the module docstring);
    :data:`NO_EVIDENCE` when they are all equal."""
    x = torch.sort(column.double()).values
    n = x.numel()
    if n < 2 or bool(x[0] == x[-1]):
        return NO_EVIDENCE
    below = torch.arange(1, n, dtype=torch.float64)  # the lower group is x[:k], k = 1..n-1
    total = torch.cumsum(x, 0)
    mean_low = total[:-1] / below
    mean_high = (total[-1] - total[:-1]) / (n - below)
    # w0 * w1 as k (n - k) / n^2, exact in floating point, so mirror-image splits tie
    # exactly and the first one wins (1 / 3 * (1 - 1 / 3) would not equal 2 / 3 * (1 - 2 / 3))
    between = below * (n - below) / (n * n) * (mean_low - mean_high) ** 2
    between[x[1:] == x[:-1]] = -1.0  # a split must fall between two distinct scores
    return float(x[int(torch.argmax(between)) + 1])


def guarded_otsu_threshold(column: torch.Tensor, max_share: float = MAX_SHARE) -> float:
    """Otsu's threshold, split again within the upper group while that group holds more
    than ``max_share`` of the scores (see the module docstring)."""
    threshold = otsu_threshold(column)
    while not math.isinf(threshold) and float((column >= threshold).double().mean()) > max_share:
        higher = otsu_threshold(column[column >= threshold])
        if math.isinf(higher):  # the upper group's scores are all equal: cannot split
            break
        threshold = higher
    return threshold


def otsu(scores: torch.Tensor, max_share: float = MAX_SHARE) -> torch.Tensor:
    """``(C,)``: Otsu's (guarded) threshold of each class (column of ``(N, C)`` scores)."""
    checked = _check(scores)
    if not 0.0 < max_share <= 1.0:
        raise ValueError(f"max_share must be within (0, 1], got {max_share}")
    return torch.tensor(
        [guarded_otsu_threshold(checked[:, c], max_share) for c in range(checked.shape[1])]
    )


def calibrated(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``(C,)``: per class, the threshold whose labels ``scores >= t`` have the best F1
    against the multi-hot ``targets`` (the lowest such score on a tie; a class without
    a target gets :data:`NO_EVIDENCE`). With ground truth as targets this is the
    ceiling no label-free rule can beat on the same images."""
    checked = _check(scores)
    if targets.shape != scores.shape:
        raise ValueError(
            f"targets {tuple(targets.shape)} and scores {tuple(scores.shape)} differ in shape"
        )
    actual = targets > 0
    out = []
    for c in range(checked.shape[1]):
        order = torch.argsort(checked[:, c], descending=True, stable=True)
        ranked, hits = checked[order, c], actual[order, c].double()
        positives = float(hits.sum())
        if positives == 0:
            out.append(NO_EVIDENCE)
            continue
        true_pos = torch.cumsum(hits, 0)  # labels = the k + 1 highest scores
        f1 = 2 * true_pos / (torch.arange(1, len(ranked) + 1) + positives)
        last = torch.ones_like(ranked, dtype=torch.bool)  # only cut below a run of ties
        last[:-1] = ranked[1:] < ranked[:-1]
        f1[~last] = -1.0
        out.append(float(ranked[int(torch.argmax(f1))]))
    return torch.tensor(out)


def no_evidence(thresholds: torch.Tensor) -> list[int]:
    """The classes whose threshold is :data:`NO_EVIDENCE` (they never fire)."""
    return [c for c, t in enumerate(thresholds.tolist()) if math.isinf(t)]


#: The label-free rules: name -> ``(N, C)`` scores -> ``(C,)`` thresholds.
RULES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "otsu": otsu,
}
#: The rule runs are read with (chosen by benchmarks/hard_labels.py; see the README).
DEFAULT_RULE = "otsu"
