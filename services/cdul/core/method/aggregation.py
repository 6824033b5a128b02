"""Min-max aggregation of snippet scores and the initial pseudo label: Eq. 5-7.

For every image and class j, with ``s_i^j`` the score of snippet i (Eq. 4)::

    alpha_j = max_i s_i^j                      (Eq. 5)
    beta_j  = min_i s_i^j
    gamma_j = 1 if alpha_j >= zeta else 0      (Eq. 6; alpha exactly at zeta counts)
    s_ag_j  = gamma_j * alpha_j + (1 - gamma_j) * beta_j
    y_j     = (s_glob_j + s_ag_j) / 2          (Eq. 7)

A class that some snippet is confident about keeps that high score; otherwise the
lowest snippet score pushes it down. zeta is not given in the paper: it is a parameter
(default 0.5, the design's choice; the study's code used 0) and is recorded with every
artefact. Everything works on a batch of images at once. Batches whose images have
different snippet counts are padded, with ``valid`` marking the real snippets.
"""

from __future__ import annotations

import torch

DEFAULT_ZETA = 0.5


def check_snippets(snippet_scores: torch.Tensor, valid: torch.Tensor | None = None) -> None:
    """ValueError unless ``(N, S, C)`` scores with S >= 1 and, with a ``(N, S)`` mask,
    at least one real snippet per image (every aggregation's precondition)."""
    if snippet_scores.dim() != 3:
        raise ValueError(
            f"snippet scores must have shape (images, snippets, classes); got "
            f"{tuple(snippet_scores.shape)}"
        )
    if snippet_scores.shape[1] == 0:
        raise ValueError("cannot aggregate zero snippets per image")
    if valid is None:
        return
    if valid.shape != snippet_scores.shape[:2]:
        raise ValueError(
            f"valid mask has shape {tuple(valid.shape)}, expected {tuple(snippet_scores.shape[:2])}"
        )
    if not bool(valid.any(dim=1).all()):
        empty = (~valid.any(dim=1)).nonzero().flatten().tolist()
        raise ValueError(f"images {empty} have no valid snippet to aggregate")


def alpha_beta(
    snippet_scores: torch.Tensor, valid: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 5: max and min over snippets of ``(N, S, C)`` scores -> two ``(N, C)`` tensors.

    ``valid`` is an optional ``(N, S)`` boolean mask; padded snippets are ignored.
    """
    check_snippets(snippet_scores, valid)
    if valid is None:
        return snippet_scores.amax(dim=1), snippet_scores.amin(dim=1)
    mask = valid.unsqueeze(-1)
    alpha = snippet_scores.masked_fill(~mask, float("-inf")).amax(dim=1)
    beta = snippet_scores.masked_fill(~mask, float("inf")).amin(dim=1)
    return alpha, beta


def aggregate(alpha: torch.Tensor, beta: torch.Tensor, zeta: float = DEFAULT_ZETA) -> torch.Tensor:
    """Eq. 6: ``gamma * alpha + (1 - gamma) * beta`` with ``gamma = [alpha >= zeta]``."""
    if alpha.shape != beta.shape:
        raise ValueError(f"alpha {tuple(alpha.shape)} and beta {tuple(beta.shape)} differ")
    if not 0.0 <= zeta <= 1.0:
        raise ValueError(f"zeta must lie in [0, 1] (scores are probabilities); got {zeta}")
    return torch.where(alpha >= zeta, alpha, beta)


def pseudo_label(global_scores: torch.Tensor, aggregate_scores: torch.Tensor) -> torch.Tensor:
    """Eq. 7: the initial pseudo label, the mean of global and aggregate scores."""
    if global_scores.shape != aggregate_scores.shape:
        raise ValueError(
            f"global scores {tuple(global_scores.shape)} and aggregate scores "
            f"{tuple(aggregate_scores.shape)} differ in shape"
        )
    return (global_scores + aggregate_scores) / 2


def initial_pseudo_labels(
    global_scores: torch.Tensor,
    snippet_scores: torch.Tensor,
    zeta: float = DEFAULT_ZETA,
    valid: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Eq. 5-7 in one call: returns ``alpha``, ``beta``, ``aggregate`` and ``final``."""
    alpha, beta = alpha_beta(snippet_scores, valid)
    if alpha.shape != global_scores.shape:
        raise ValueError(
            f"global scores {tuple(global_scores.shape)} do not match snippet scores "
            f"{tuple(snippet_scores.shape)} (expected (N, C) and (N, S, C))"
        )
    agg = aggregate(alpha, beta, zeta)
    return {
        "alpha": alpha,
        "beta": beta,
        "aggregate": agg,
        "final": pseudo_label(global_scores, agg),
    }
