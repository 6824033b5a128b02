"""The default tiny CLIP's weights, shipped in the repository in a compact form.

Training the tiny CLIP from nothing costs a new checkout minutes on two cores, and CI
paid it on every clean run. The default recipe's model (seed 0) is therefore shipped,
3.6 MB instead of the 31 MB checkpoint, and expanded into the cache on first use:

- every floating tensor of more than ``FULL_PRECISION_NUMEL`` values in float16 (the
  rest, the logit scale and BatchNorm's counters, as they are);
- of the token embedding (49,408 x 128, 25 MB) only the rows training moved: the few
  dozen tokens the captions use. The recipe takes no weight decay on the embedding,
  so every other row keeps its initial value, and ``expand`` draws those again from
  the recipe's seed (``initial`` below), as training did.

The file names the recipe's cache key; a recipe whose key has no shipped file is
trained. ``cdul world models --ship`` trains the default recipe from nothing and
writes the file again (``make world-weights``); ``tests/world/test_shipped.py`` fails
while the shipped file and the default recipe disagree.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from cdul.core.errors import ConfigError

SHIPPED_DIR = Path(__file__).parent / "weights"
FORMAT = 1
FULL_PRECISION_NUMEL = 1024
EMBEDDING = "token_embedding.weight"

State = dict[str, torch.Tensor]


def shipped_path(key: str, directory: Path = SHIPPED_DIR) -> Path:
    return directory / f"{key}.pt"


def compact(state: State, initial_embedding: torch.Tensor) -> dict[str, Any]:
    """``state`` with float16 tensors and only the embedding rows that differ from
    ``initial_embedding`` (the rows before training)."""
    embedding = state[EMBEDDING]
    if embedding.shape != initial_embedding.shape:
        raise ConfigError(
            f"token embedding {tuple(embedding.shape)} does not match its initial "
            f"{tuple(initial_embedding.shape)}"
        )
    moved = torch.nonzero((embedding != initial_embedding).any(dim=1)).flatten()
    tensors = {name: _small(value) for name, value in state.items() if name != EMBEDDING}
    return {
        "format": FORMAT,
        "tensors": tensors,
        "embedding_rows": moved,
        "embedding_values": embedding[moved].to(torch.float16),
    }


def expand(blob: dict[str, Any], initial_embedding: torch.Tensor) -> State:
    """The state_dict ``compact`` stored: float32 again, untouched rows as they began."""
    if blob.get("format") != FORMAT:
        raise ConfigError(f"shipped weights of format {blob.get('format')!r}, expected {FORMAT}")
    state = {name: _full(value) for name, value in blob["tensors"].items()}
    embedding = initial_embedding.clone()
    embedding[blob["embedding_rows"]] = blob["embedding_values"].to(embedding.dtype)
    state[EMBEDDING] = embedding
    return state


def write(
    path: Path, state: State, summary: dict[str, Any], initial_embedding: torch.Tensor
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    torch.save({**compact(state, initial_embedding), "summary": summary}, tmp)
    tmp.replace(path)


def read(
    path: Path, initial_embedding: Callable[[], torch.Tensor]
) -> tuple[State, dict[str, Any]] | None:
    """The expanded state_dict and summary stored at ``path``; None when not shipped."""
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a damaged file: name it rather than train silently
        raise ConfigError(f"shipped weights {path} cannot be read ({error})") from None
    summary = {**blob["summary"], "source": f"shipped ({path.name}, float16)"}
    return expand(blob, initial_embedding()), summary


def _small(value: torch.Tensor) -> torch.Tensor:
    if value.is_floating_point() and value.numel() > FULL_PRECISION_NUMEL:
        return value.to(torch.float16)
    return value.clone()


def _full(value: torch.Tensor) -> torch.Tensor:
    return value.to(torch.float32) if value.dtype == torch.float16 else value.clone()
