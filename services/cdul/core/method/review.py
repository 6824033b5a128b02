"""Review priority: how likely each hard label ``(image i, class c)`` is wrong, without
ground truth. The review queue is the pairs in decreasing priority.

A hard label is ``h_ic = [s_ic >= t_c]`` (pseudo-label score ``s``, the class's
label-free threshold ``t``; :mod:`cdul.core.method.thresholds`), ``sign_ic = +1`` for a
label 1 and ``-1`` for a label 0. All evidence is on the logit scale ``logit(x) =
log(x / (1 - x))`` (scores clamped to ``[EPS, 1 - EPS]``, so an infinite "never"
threshold is finite here):

``distance``  ``d_ic = |logit(s_ic) - logit(t_c)|``
    How far the score is from its class's threshold. A label near its threshold
    could as well have gone the other way (uncertainty sampling's "least confident").

``evidence``  ``e_ic = mean over k of sign_ic * (logit(t^k_c) - logit(v^k_ic))``
    The run's separate pieces of evidence ``v^k`` (the global score, Eq. 2, and the
    snippets' aggregate, Eq. 6), each against its own label-free threshold ``t^k``: how
    far, on average, they side against the label. The final score mixes them, so a
    label one of them contradicts strongly is doubtful even far from the threshold.

``disagreement``  ``a_ic = sign_ic * (logit(u_c) - logit(p_ic))``
    A classifier trained on the pseudo labels of *other* images (cross-fitted, so it
    never saw image i's label) gives ``p_ic`` with its own label-free threshold ``u_c``;
    ``a`` is its logit margin against the label. Out-of-sample predicted probabilities
    are what confident learning ranks label quality by (Northcutt et al., JAIR 2021;
    cleanlab's multi-label scores, Thyagarajan et al. 2023): a network fitted on many
    images averages out one image's CLIP noise, which it could memorise in-sample.

``priority``  ``r_ic = a_ic + e_ic - d_ic`` (each term that is available).
    Equal weights; measured on world seeds against other weights and each term alone
    (benchmarks/review_queue.py; the table is in the README).
"""

from __future__ import annotations

import torch

#: Scores are clamped to [EPS, 1 - EPS] before the logit (a score of 0 or 1 is finite).
EPS = 1e-6


def logit(x: torch.Tensor) -> torch.Tensor:
    """``log(x / (1 - x))`` in float64 of ``x`` clamped to ``[EPS, 1 - EPS]``."""
    clamped = x.double().clamp(EPS, 1.0 - EPS)
    return torch.log(clamped) - torch.log1p(-clamped)


def _check(scores: torch.Tensor, thresholds: torch.Tensor, name: str) -> None:
    if scores.dim() != 2:
        raise ValueError(f"{name} must be (images, classes); got {tuple(scores.shape)}")
    if thresholds.shape != (scores.shape[1],):
        raise ValueError(
            f"{name}: {scores.shape[1]} classes but thresholds of shape {tuple(thresholds.shape)}"
        )
    if bool(torch.isnan(scores).any()) or bool(torch.isnan(thresholds).any()):
        raise ValueError(f"{name} or its thresholds hold NaN")


def hard_labels(scores: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """``(N, C)`` booleans ``scores >= thresholds`` (per class)."""
    _check(scores, thresholds, "scores")
    return scores.double() >= thresholds.double()


def distance(scores: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """``d = |logit(s) - logit(t)|`` per pair, ``(N, C)`` float64."""
    _check(scores, thresholds, "scores")
    return (logit(scores) - logit(thresholds)[None, :]).abs()


def against(labels: torch.Tensor, scores: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """``sign * (logit(t) - logit(v))``: how far ``scores`` ``(N, C)`` side against the
    hard ``labels`` ``(N, C)`` booleans, beyond ``thresholds`` ``(C,)`` or ``(N, C)``."""
    if labels.shape != scores.shape:
        raise ValueError(
            f"labels {tuple(labels.shape)} and scores {tuple(scores.shape)} differ in shape"
        )
    if thresholds.dim() == 1:
        _check(scores, thresholds, "scores")
        cut = logit(thresholds)[None, :]
    elif thresholds.shape == scores.shape:
        cut = logit(thresholds)
    else:
        raise ValueError(f"thresholds {tuple(thresholds.shape)} fit neither (C,) nor "
                         f"scores {tuple(scores.shape)}")  # fmt: skip
    sign = labels.double() * 2.0 - 1.0
    return sign * (cut - logit(scores))


def evidence(labels: torch.Tensor, pieces: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """``e``: the mean of :func:`against` over the ``(scores, thresholds)`` pieces."""
    if not pieces:
        raise ValueError("evidence needs at least one (scores, thresholds) piece")
    return torch.stack([against(labels, v, t) for v, t in pieces]).mean(dim=0)


def priority(
    distance: torch.Tensor,
    evidence: torch.Tensor | None = None,
    disagreement: torch.Tensor | None = None,
) -> torch.Tensor:
    """``r = a + e - d`` over the terms given: higher = more likely wrong."""
    total = -distance
    for term in (evidence, disagreement):
        if term is not None:
            if term.shape != distance.shape:
                raise ValueError(f"a term of shape {tuple(term.shape)} for distances of "
                                 f"shape {tuple(distance.shape)}")  # fmt: skip
            total = total + term
    return total


def review_order(priorities: torch.Tensor) -> torch.Tensor:
    """``(N * C, 2)`` ``(image, class)`` pairs, highest priority first (ties: row-major
    order, so the queue is reproducible)."""
    flat = priorities.reshape(-1)
    order = torch.sort(-flat, stable=True).indices
    columns = priorities.shape[1]
    return torch.stack([order // columns, order % columns], dim=1)


def image_priority(priorities: torch.Tensor) -> torch.Tensor:
    """``(N,)``: an image's priority is its most doubtful label's."""
    return priorities.max(dim=1).values


def review_score(priorities: torch.Tensor) -> torch.Tensor:
    """``1 / (1 + exp(r))`` in (0, 1): a score that sorts ascending in the review order
    (Label Studio's Data Manager shows the lowest prediction score first when sorted
    ascending; the score of a clear label is near 1)."""
    return torch.sigmoid(-priorities.double())
