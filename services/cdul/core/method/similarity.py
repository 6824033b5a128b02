"""CLIP similarity between images (or snippets) and class prompts: Eq. 1-4.

Eq. 1 (global): cosine similarity between the image embedding ``f_I`` and each class
prompt embedding ``f_T^j`` ("a photo of a {class_j}")::

    cos_j = <f_I, f_T^j> / (||f_I|| * ||f_T^j||)

Eq. 2: the global class scores are a softmax over the C classes of the cosines scaled
by CLIP's learned temperature::

    s_glob_j = exp(t * cos_j) / sum_k exp(t * cos_k),   t = exp(logit_scale)

CLIP stores the *log* of the scale (``model.logit_scale``); the multiplier is its
exponential (100 for OpenAI's weights). Dividing by ``logit_scale`` instead, a bug seen
in a public reproduction, makes every softmax nearly uniform (about 1/C everywhere).

Eq. 3-4 (local): the same two steps for each snippet embedding ``f_{I,i}``, giving a
score vector per snippet. The functions below broadcast over leading dimensions, so
the same code computes Eq. 1-2 on ``(N, D)`` image embeddings and Eq. 3-4 on
``(N, S, D)`` snippet embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cdul.core.method.aggregation import alpha_beta


def temperature(logit_scale: torch.Tensor | float) -> torch.Tensor:
    """CLIP's softmax multiplier ``t = exp(logit_scale)`` (Eq. 2)."""
    return torch.as_tensor(logit_scale, dtype=torch.float32).exp()


def cosine_similarity(
    image_embeddings: torch.Tensor, text_embeddings: torch.Tensor
) -> torch.Tensor:
    """Eq. 1 / Eq. 3: cosines between embeddings ``(..., D)`` and class prompts ``(C, D)``.

    Returns ``(..., C)``. Inputs need not be normalised; zero vectors give cosine 0
    rather than NaN (``F.normalize`` clamps the norm).
    """
    if image_embeddings.shape[-1] != text_embeddings.shape[-1] or text_embeddings.dim() != 2:
        raise ValueError(
            "embedding sizes differ: images have shape "
            f"{tuple(image_embeddings.shape)}, class prompts {tuple(text_embeddings.shape)}; "
            "expected (..., D) and (C, D)"
        )
    images = F.normalize(image_embeddings.float(), dim=-1)
    texts = F.normalize(text_embeddings.float(), dim=-1)
    return images @ texts.T


def class_scores(cosines: torch.Tensor, logit_scale: torch.Tensor | float) -> torch.Tensor:
    """Eq. 2 / Eq. 4: softmax over classes (last dim) of ``exp(logit_scale) * cos``."""
    if cosines.shape[-1] == 0:
        raise ValueError("cannot score against an empty label set (0 classes)")
    return torch.softmax(temperature(logit_scale) * cosines.float(), dim=-1)


@dataclass(frozen=True)
class ViewScores:
    """Eq. 1-5 for one image from the embeddings of its views (whole image + snippets)."""

    global_cosine: torch.Tensor  # (C,) Eq. 1
    global_scores: torch.Tensor  # (C,) Eq. 2
    snippet_cosine: torch.Tensor  # (S, C) Eq. 3
    snippet_scores: torch.Tensor  # (S, C) Eq. 4
    alpha: torch.Tensor  # (C,) Eq. 5
    beta: torch.Tensor


def view_scores(
    embeddings: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor | float
) -> ViewScores:
    """Eq. 1-5 from one image's ``(1 + S, D)`` view embeddings (whole image first) and
    ``(C, D)`` prompt embeddings: what the CLIP service answers, and what a relabel
    computes again from stored embeddings."""
    cosine = cosine_similarity(embeddings, text)
    scores = class_scores(cosine, logit_scale)
    alpha, beta = alpha_beta(scores[None, 1:])
    return ViewScores(cosine[0], scores[0], cosine[1:], scores[1:], alpha[0], beta[0])
