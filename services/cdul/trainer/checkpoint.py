"""Checkpoints: everything needed to continue a run as if it had never stopped.

One object, ``RUN/training/checkpoint.pt``, rewritten at the end of every epoch: model
and optimiser (and AMP scaler) state, the latent pseudo labels, the number of finished
epochs, the metrics so far, the config, and the random states (Python, NumPy, torch,
CUDA, the DataLoader's generator). It is serialised to a local temp file and handed
to the store, whose writes are atomic (temp file + rename on ``file://``, one PUT or
completed multipart upload on S3): a job killed mid-write leaves the previous
checkpoint, never half of a new one. Loaded with ``weights_only=True``: only tensors
and plain containers, nothing that could run code.
"""

from __future__ import annotations

import os
import random
import tempfile
from typing import Any

import numpy as np
import torch

from cdul.core.errors import ObjectNotFoundError, StorageError
from cdul.core.storage import ObjectStore

CHECKPOINT_KEY = "training/checkpoint.pt"
FORMAT = 1


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": _python_state(),
        "numpy": {
            "kind": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
        "loader": generator.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _python_state() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    return {
        "version": version,
        "internal": torch.tensor(internal, dtype=torch.int64),
        "gauss": gauss,
    }


def restore_rng(state: dict[str, Any], generator: torch.Generator) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"].tolist()), py["gauss"]))
    n = state["numpy"]
    np.random.set_state(
        (
            n["kind"],
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    generator.set_state(state["loader"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(store: ObjectStore, payload: dict[str, Any]) -> None:
    """Write ``payload`` as the run's checkpoint, atomically."""
    payload = {**payload, "format": FORMAT}
    with tempfile.TemporaryDirectory(prefix="cdul-ckpt-") as tmp:
        path = os.path.join(tmp, "checkpoint.pt")
        torch.save(payload, path)
        store.write_file(CHECKPOINT_KEY, path)


def load(store: ObjectStore) -> dict[str, Any] | None:
    """The run's checkpoint, or None when there is none yet."""
    with tempfile.TemporaryDirectory(prefix="cdul-ckpt-") as tmp:
        path = os.path.join(tmp, "checkpoint.pt")
        try:  # one request: no separate existence check
            store.read_file(CHECKPOINT_KEY, path)
        except ObjectNotFoundError:
            return None
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise StorageError(
                f"{store.uri_for(CHECKPOINT_KEY)} is not a readable checkpoint: {error}"
            ) from None
    if payload.get("format") != FORMAT:
        raise StorageError(f"{store.uri_for(CHECKPOINT_KEY)} has an unknown format")
    return payload
