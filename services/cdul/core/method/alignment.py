"""Training loss and gradient-aligned update of latent pseudo labels: Eq. 8.

The classifier outputs logits ``z`` (one per class) and predicts ``p = sigmoid(z)``:
multi-label, so each class is an independent Bernoulli variable (a softmax over
classes, seen in a public reproduction, would make the classes compete).

Loss (the choice this project makes, since the paper only says "KL divergence"): the
per-class Bernoulli KL divergence from the pseudo label ``y`` to the prediction ``p``::

    KL(y || p) = y log(y / p) + (1 - y) log((1 - y) / (1 - p))

It is BCE minus the (constant in ``z``) entropy of ``y``, so ``dKL/dz = p - y`` as for
BCE, but it is 0 when the prediction matches the label, which makes it readable as a
distance. Its derivative with respect to the pseudo label has a closed form::

    dKL/dy = log(y / (1 - y)) - log(p / (1 - p)) = logit(y) - z

Eq. 8, gradient alignment: the pseudo labels are kept as latents ``l`` with
``y = sigmoid(l)`` and moved against the loss gradient, weighted by a Gaussian ``psi``
centred at 0.5 so that uncertain labels move the most::

    psi(y) = N(y; 0.5, sigma) = exp(-(y - 0.5)^2 / (2 sigma^2)) / (sigma sqrt(2 pi))
    l <- l - lr_pl * psi(y) * dKL/dy

``psi`` is the normalised density, as in the reproducibility study's code (``sigma =
1`` by default; the paper does not give it). The gradient is per element (the loss of
that image and class alone), so the step does not depend on batch size or class count.

Clamping: ``y`` is clamped to ``[eps, 1 - eps]`` before every logit, and latents to
``[logit(eps), logit(1 - eps)]``, so labels of exactly 0 or 1 never produce infinities.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

DEFAULT_SIGMA = 1.0
DEFAULT_EPS = 1e-6


def to_latent(pseudo_labels: torch.Tensor, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """``logit(clamp(y, eps, 1 - eps))``: the latent whose sigmoid is the label."""
    return torch.logit(pseudo_labels.float().clamp(eps, 1.0 - eps))


def from_latent(latent: torch.Tensor) -> torch.Tensor:
    """``y = sigmoid(l)``."""
    return torch.sigmoid(latent)


def bernoulli_kl(
    pseudo_labels: torch.Tensor,
    logits: torch.Tensor,
    reduction: str = "mean",
) -> torch.Tensor:
    """Per-class Bernoulli KL(y || sigmoid(z)), computed stably from logits.

    ``reduction``: ``"mean"`` over every element, ``"sum"``, or ``"none"``.
    Terms ``0 log 0`` are 0 (``torch.xlogy``), so hard labels are fine.
    """
    if pseudo_labels.shape != logits.shape:
        raise ValueError(
            f"pseudo labels {tuple(pseudo_labels.shape)} and logits "
            f"{tuple(logits.shape)} differ in shape"
        )
    y = pseudo_labels.to(logits.dtype)
    loss = (
        torch.xlogy(y, y)
        - y * F.logsigmoid(logits)
        + torch.xlogy(1 - y, 1 - y)
        - (1 - y) * F.logsigmoid(-logits)
    )
    reducers = {"mean": torch.mean, "sum": torch.sum, "none": lambda t: t}
    if reduction not in reducers:
        raise ValueError(f"reduction must be one of {sorted(reducers)}, got {reduction!r}")
    return reducers[reduction](loss)


def kl_gradient_wrt_labels(
    pseudo_labels: torch.Tensor, logits: torch.Tensor, eps: float = DEFAULT_EPS
) -> torch.Tensor:
    """``dKL/dy = logit(y) - z`` per element, with ``y`` clamped before the logit."""
    return to_latent(pseudo_labels, eps) - logits.float()


def gaussian_weight(pseudo_labels: torch.Tensor, sigma: float = DEFAULT_SIGMA) -> torch.Tensor:
    """``psi(y)``: the normal density with mean 0.5 and standard deviation ``sigma``."""
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    norm = 1.0 / (sigma * math.sqrt(2.0 * math.pi))
    return norm * torch.exp(-((pseudo_labels.float() - 0.5) ** 2) / (2.0 * sigma**2))


def align_latent(
    latent: torch.Tensor,
    logits: torch.Tensor,
    step_size: float,
    sigma: float = DEFAULT_SIGMA,
    eps: float = DEFAULT_EPS,
) -> torch.Tensor:
    """Eq. 8: one gradient-alignment step; returns the new (clamped) latents.

    ``latent`` and ``logits`` are ``(N, C)``; ``logits`` are the classifier's outputs
    for the same images (treated as constants: no gradient flows into the network).
    """
    if latent.shape != logits.shape:
        raise ValueError(
            f"latents {tuple(latent.shape)} and logits {tuple(logits.shape)} differ in shape"
        )
    if step_size < 0:
        raise ValueError(f"step size must be >= 0, got {step_size}")
    labels = from_latent(latent.float())
    grad = kl_gradient_wrt_labels(labels, logits.detach(), eps)
    updated = latent.float() - step_size * gaussian_weight(labels, sigma) * grad
    # The same float32 bounds to_latent gives for labels 0 and 1, so the two agree.
    low, high = to_latent(torch.tensor([0.0, 1.0]), eps).tolist()
    return updated.clamp(low, high)
