"""Where the world's trained models are cached, and under which key.

A model is trained at most once per configuration: the file name carries a hash of
everything that determines its weights (model config, recipe, seed, thread count,
the world generator's version). A changed setting is a different file, so a stale
model is never reused. Files are written to a temp name and renamed, so a killed
training run never leaves a file that looks finished.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

# Bump when the generator's pixels change: every cached model is then retrained.
WORLD_VERSION = 2


def cache_dir() -> Path:
    """``$CDUL_CACHE_DIR``, else ``$XDG_CACHE_HOME/cdul``, else ``~/.cache/cdul``."""
    if explicit := os.environ.get("CDUL_CACHE_DIR"):
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cdul"


def cache_key(kind: str, settings: dict[str, Any]) -> str:
    blob = json.dumps({"kind": kind, "world": WORLD_VERSION, **settings}, sort_keys=True)
    return f"{kind}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def save_atomic(state: dict[str, Any], path: Path, summary: dict[str, Any]) -> None:
    """Save ``state`` with ``torch.save`` and ``summary`` as JSON beside it, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    torch.save(state, tmp)
    os.replace(tmp, path)
    side = path.with_suffix(".json")
    tmp_side = side.with_name(f".tmp-{os.getpid()}-{side.name}")
    tmp_side.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp_side, side)


def load_summary(path: Path) -> dict[str, Any] | None:
    """The JSON summary of a finished cached model, or None when it is not there."""
    side = path.with_suffix(".json")
    if not (path.is_file() and side.is_file()):
        return None
    return json.loads(side.read_text(encoding="utf-8"))
