"""The one way to read a state_dict from a file (timm's ``load_state_dict`` /
``clean_state_dict`` and open_clip's ``factory.load_state_dict`` are the models).

``weights_only=True`` always: weights may come from an object store, and a pickle loaded
without it can run arbitrary code (pytorch/serve issue 3360 is the same problem in
TorchServe's own base handler). Checkpoints that wrap the tensors (``{"state_dict":
...}`` as Lightning writes, ``{"model": ...}`` as torchvision's references do) are
unwrapped, and DataParallel/DDP's ``module.`` prefix is dropped.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

from cdul.core.errors import ConfigError

__all__ = ["load_state_dict"]

_WRAPPERS = ("state_dict", "model")


def load_state_dict(
    path: str | os.PathLike[str], what: str = "weights file"
) -> dict[str, torch.Tensor]:
    """The tensors of the state_dict saved at ``path``; ConfigError naming ``what`` and
    the path if it is missing, not loadable, or not a mapping of names to tensors."""
    where = f"{what} {os.fspath(path)!r}"
    try:
        state = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConfigError(f"{where} does not exist") from None
    except Exception as error:  # unpickling refusals, truncated zip files, ...
        raise ConfigError(f"{where} is not a loadable state_dict: {error}") from None
    for wrapper in _WRAPPERS:
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise ConfigError(
            f"{where} holds a {type(state).__name__}, not a state_dict "
            "(save it with torch.save(model.state_dict(), path))"
        )
    return {k.removeprefix("module."): v for k, v in state.items()}
