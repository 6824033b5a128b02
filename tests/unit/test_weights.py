"""The one state_dict loader (cdul.core.weights): every job's weights go through it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cdul.core.errors import ConfigError
from cdul.core.weights import load_state_dict


def _save(obj: object, path: Path) -> Path:
    torch.save(obj, path)
    return path


def test_plain_wrapped_and_data_parallel_state_dicts_load_alike(tmp_path: Path) -> None:
    state = {"conv.weight": torch.arange(6.0).view(2, 3), "conv.bias": torch.ones(2)}
    plain = load_state_dict(_save(state, tmp_path / "plain.pt"))
    assert plain.keys() == state.keys() and torch.equal(plain["conv.weight"], state["conv.weight"])
    for wrapper in ("state_dict", "model"):  # Lightning / torchvision references
        wrapped = load_state_dict(_save({wrapper: state, "epoch": 3}, tmp_path / f"{wrapper}.pt"))
        assert wrapped.keys() == state.keys()
    ddp = {f"module.{k}": v for k, v in state.items()}
    assert load_state_dict(_save(ddp, tmp_path / "ddp.pt")).keys() == state.keys()


class _Payload:
    """Stands for an arbitrary pickled object: weights_only must refuse it."""


def test_bad_files_are_refused_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"backbone weights '.*missing.pt' does not exist"):
        load_state_dict(tmp_path / "missing.pt", "backbone weights")
    (tmp_path / "garbage.pt").write_bytes(b"not a torch file")
    with pytest.raises(ConfigError, match=r"garbage\.pt' is not a loadable state_dict"):
        load_state_dict(tmp_path / "garbage.pt")
    with pytest.raises(ConfigError, match="is not a loadable state_dict"):
        load_state_dict(_save({"x": _Payload()}, tmp_path / "pickle.pt"))
    with pytest.raises(ConfigError, match="holds a list, not a state_dict"):
        load_state_dict(_save([torch.ones(1)], tmp_path / "list.pt"))
    with pytest.raises(ConfigError, match="holds a dict, not a state_dict"):
        load_state_dict(_save({"w": torch.ones(1), "step": 3}, tmp_path / "mixed.pt"))
