"""Image embeddings as stored and sent: normalised float16 vectors, and whose they are.

The CLIP service (``include_embeddings``), the labeler and ``cdul relabel`` share these:
the rounding that makes a stored embedding score exactly as the run scored it, the byte
layout of the proto's ``view_embeddings`` and of the stored objects
(:mod:`cdul.core.embeddings`), and the model identity that keeps two models' embeddings
apart. No pyarrow here: the service image has none.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cdul.core.errors import ConfigError, StorageError

DTYPE = "float16"
#: What names a model's image embeddings: any difference makes them another model's.
IDENTITY_FIELDS = ("model", "pretrained", "weights_digest", "preprocess", "precision",
                   "input_size", "embed_dim", "dtype")  # fmt: skip


def model_identity(info: Any) -> dict[str, Any]:
    """The identity of the embeddings a CLIP service answers (its ``ModelInfo``)."""
    return {
        "model": info.model_name, "pretrained": info.pretrained,
        "weights_digest": info.weights_digest, "preprocess": info.preprocess,
        "precision": info.precision, "input_size": int(info.input_size),
        "embed_dim": int(info.embed_dim), "dtype": DTYPE,
    }  # fmt: skip


def describe(identity: dict[str, Any]) -> str:
    digest = identity.get("weights_digest") or ""
    weights = f"{identity.get('pretrained')}" + (f", sha256 {digest[:12]}" if digest else "")
    return (f"{identity.get('model')} ({weights}; {identity.get('preprocess')} preprocessing, "
            f"{identity.get('precision')}, {identity.get('embed_dim')}-d)")  # fmt: skip


def check_same_model(
    stored: dict[str, Any], current: dict[str, Any], stored_as: str, current_as: str
) -> None:
    """ConfigError naming both models when ``stored`` and ``current`` differ."""
    changed = [k for k in IDENTITY_FIELDS if stored.get(k) != current.get(k)]
    if changed:
        raise ConfigError(
            f"{stored_as} holds image embeddings of {describe(stored)}, but {current_as} is "
            f"{describe(current)} (they differ in {', '.join(changed)}); embeddings of two "
            "models are never mixed: use the service of the stored model, or label into a new run"
        )


def content_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def rounded(views: torch.Tensor) -> torch.Tensor:
    """``(V, D)`` embeddings as stored: normalised, float16."""
    return F.normalize(views.float(), dim=-1).half()


def to_bytes(views: torch.Tensor) -> bytes:
    return views.half().contiguous().numpy().astype("<f2", copy=False).tobytes()


def from_bytes(data: bytes, dim: int, where: str) -> torch.Tensor:
    """``(V, dim)`` float16 from stored bytes; StorageError naming ``where`` when the size
    is not a whole number of ``dim``-vectors."""
    if dim < 1 or len(data) == 0 or len(data) % (2 * dim):
        raise StorageError(f"{where}: {len(data)} bytes are not {dim}-d float16 embeddings")
    return torch.from_numpy(np.frombuffer(data, dtype="<f2").astype(np.float16).reshape(-1, dim))
