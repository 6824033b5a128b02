"""The default tiny CLIP shipped in compact form (``cdul.world.shipped``)."""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch

from cdul.core.errors import ConfigError
from cdul.world import cache, shipped, tiny_clip


@pytest.fixture(scope="module")
def short_training():
    """A few real training steps: enough to move the caption tokens' rows and no other."""
    recipe = tiny_clip.TinyClipRecipe(steps=3, batch_size=8, warmup_steps=1)
    state, summary = tiny_clip.train_tiny_clip(recipe, progress=False)
    return recipe, state, summary


def test_compact_keeps_every_tensor_and_only_the_rows_training_moved(short_training):
    recipe, state, _ = short_training
    initial = tiny_clip.initial_token_embedding(recipe.seed)
    blob = shipped.compact(state, initial)
    rows = blob["embedding_rows"]
    # the captions' tokens: "a photo of a drawing of", colours and shapes, start/end
    assert 10 < len(rows) < 100
    moved = (state[shipped.EMBEDDING] != initial).any(dim=1)
    assert moved.sum() == len(rows) and moved[rows].all()
    restored = shipped.expand(blob, initial)
    assert restored.keys() == state.keys()
    for name, value in state.items():
        assert restored[name].dtype == value.dtype, name
        if name == shipped.EMBEDDING:
            continue  # below
        if value.is_floating_point() and value.numel() > shipped.FULL_PRECISION_NUMEL:
            torch.testing.assert_close(restored[name], value.half().float(), rtol=0, atol=0)
        else:  # small tensors, BatchNorm's counters, the logit scale: as they were
            assert torch.equal(restored[name], value), name
    # the rows training moved, float16-rounded; the rest the initial rows bit for bit
    embedding = state[shipped.EMBEDDING]
    assert torch.equal(restored[shipped.EMBEDDING][moved], embedding[moved].half().float())
    assert torch.equal(restored[shipped.EMBEDDING][~moved], embedding[~moved])


def test_initial_embedding_is_what_training_starts_from_and_leaves_the_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = tiny_clip.initial_token_embedding(0)
    assert torch.equal(torch.rand(3), expected_next)
    assert torch.equal(tiny_clip.initial_token_embedding(0), first)
    assert not torch.equal(tiny_clip.initial_token_embedding(1), first)


def test_the_default_recipe_is_shipped_small_and_matches_the_recipe():
    """Fails when the default recipe changes without `make world-weights`."""
    recipe = tiny_clip.TinyClipRecipe()
    path = shipped.shipped_path(recipe.key())
    present = sorted(p.name for p in shipped.SHIPPED_DIR.glob("*.pt"))
    assert path.is_file(), (
        f"no shipped weights for the default recipe ({path.name}; shipped: {present}): "
        "run `make world-weights` and commit the file"
    )
    assert present == [path.name]  # the old ones go
    assert path.stat().st_size < 5_000_000
    blob = torch.load(path, weights_only=True)
    assert blob["summary"]["recipe"] == asdict(recipe)
    assert not recipe.embedding_decay  # else every row moves and the file is 25 MB bigger


def test_a_fresh_cache_expands_the_shipped_weights_without_training(tmp_path, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("trained although the weights are shipped")

    monkeypatch.setattr(tiny_clip, "train_tiny_clip", no_training)
    path = tiny_clip.ensure_tiny_clip(directory=tmp_path, progress=False)
    summary = cache.load_summary(path)
    assert summary is not None and summary["source"].startswith("shipped")
    state = torch.load(path, weights_only=True)
    model = tiny_clip.create_clip(tiny_clip.MODEL_NAME, str(path)).model
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_a_damaged_shipped_file_is_named(tmp_path):
    broken = tmp_path / "tiny-clip-0000.pt"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match=r"tiny-clip-0000\.pt cannot be read"):
        shipped.read(broken, lambda: torch.zeros(1))
    assert shipped.read(tmp_path / "absent.pt", lambda: torch.zeros(1)) is None


def test_a_blob_of_another_format_is_refused(short_training):
    recipe, state, _ = short_training
    initial = tiny_clip.initial_token_embedding(recipe.seed)
    blob = {**shipped.compact(state, initial), "format": 99}
    with pytest.raises(ConfigError, match="format 99"):
        shipped.expand(blob, initial)
