"""The world's tiny CLIP and backbone: what they must be able to do, caching, determinism."""

import time

import pytest
import torch

from cdul.core.clip_models import create_clip
from cdul.core.clip_scoring import ClipScorer
from cdul.core.datasets import open_dataset
from cdul.world import backbone, tiny_clip
from cdul.world.report import pseudo_label_maps, zero_shot_top1

pytestmark = pytest.mark.slow


def test_tiny_clip_zero_shot_and_pseudo_label_map(world_clip, world_root):
    scorer = ClipScorer(create_clip(tiny_clip.MODEL_NAME, str(world_clip)))
    assert zero_shot_top1(scorer, seed=0, count=500) >= 0.70
    dataset = open_dataset(f"voc:{world_root}:val")
    assert len(dataset) == 500
    [result] = pseudo_label_maps(scorer, dataset, specs=["grid:3x3"], zetas=[0.5], progress=False)
    assert result.global_map >= 0.25
    assert result.final_map[0.5] >= result.global_map + 0.15
    assert result.passes_per_image == 10.0


def test_backbone_is_a_torchvision_state_dict_that_classifies_singles(world_models):
    state = torch.load(world_models["backbone"], weights_only=True)
    model = torchvision_model()
    model.load_state_dict(state)
    recipe = backbone.BackboneRecipe()  # the default, as world_models trained it (seed 0)
    assert backbone.heldout_accuracy(model.eval(), recipe, count=200) >= 0.8


def torchvision_model():
    import torchvision

    return torchvision.models.resnet18(num_classes=12)


def test_cached_models_are_reused_not_retrained(world_models):
    clip_path, backbone_path = world_models["clip"], world_models["backbone"]
    before = (clip_path.stat().st_mtime_ns, backbone_path.stat().st_mtime_ns)
    start = time.perf_counter()
    assert tiny_clip.ensure_tiny_clip(progress=False) == clip_path
    assert backbone.ensure_backbone(progress=False) == backbone_path
    assert time.perf_counter() - start < 1.0
    assert (clip_path.stat().st_mtime_ns, backbone_path.stat().st_mtime_ns) == before


def test_a_changed_setting_is_a_different_cache_entry():
    base = tiny_clip.TinyClipRecipe()
    assert tiny_clip.TinyClipRecipe(steps=999).key() != base.key()
    assert tiny_clip.TinyClipRecipe(seed=1).key() != base.key()
    assert backbone.BackboneRecipe(lr=2e-3).key() != backbone.BackboneRecipe().key()


def test_training_is_deterministic_for_a_seed():
    recipe = tiny_clip.TinyClipRecipe(steps=3, batch_size=8, warmup_steps=1)
    first, _ = tiny_clip.train_tiny_clip(recipe, progress=False)
    second, _ = tiny_clip.train_tiny_clip(recipe, progress=False)
    assert all(torch.equal(first[k], second[k]) for k in first)
    short = backbone.BackboneRecipe(steps=2, batch_size=8)
    a, _ = backbone.train_backbone(short, progress=False)
    b, _ = backbone.train_backbone(short, progress=False)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_loads_through_open_clip_like_a_pretrained_tag(world_clip):
    import open_clip

    from cdul.core.clip_models import register_project_configs

    register_project_configs()
    model, _, _ = open_clip.create_model_and_transforms(
        tiny_clip.MODEL_NAME, pretrained=str(world_clip)
    )
    ours = create_clip(tiny_clip.MODEL_NAME, str(world_clip)).model
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), ours.state_dict().values(), strict=True)
    )


def test_batches_drawn_ahead_are_those_the_loop_drew_itself():
    """Prefetching changes when a batch is drawn, never which: step k holds singles
    k*B .. k*B+B-1, so the weights (and the cache key) do not depend on it."""
    from cdul.world.generator import make_single
    from cdul.world.stream import single_batches

    transform = backbone.to_tensor()

    def encode(singles):
        return torch.stack([transform(s.image) for s in singles]), [s.caption for s in singles]

    in_worker = list(single_batches(3, "pretrain", 4, 3, encode, ahead=2))
    here = list(single_batches(3, "pretrain", 4, 3, encode, ahead=0))
    assert len(in_worker) == len(here) == 3
    for step, ((images, captions), (same, same_captions)) in enumerate(
        zip(in_worker, here, strict=True)
    ):
        assert torch.equal(images, same) and captions == same_captions
        expected = [make_single(3, step * 4 + i) for i in range(4)]
        assert captions == [s.caption for s in expected]
        assert torch.equal(images, torch.stack([transform(s.image) for s in expected]))


def test_tiny_clip_residual_blocks_start_live_unless_asked():
    """open_clip zero-initialises each residual block's last BatchNorm scale (kept with
    zero_init_residual=True); False, the default, sets it to 1 (the stalled seeds' fix)."""
    from dataclasses import replace

    recipe = tiny_clip.TinyClipRecipe(steps=1, batch_size=4, warmup_steps=1, lr=1e-9)
    live, _ = tiny_clip.train_tiny_clip(replace(recipe, zero_init_residual=False), progress=False)
    zero, _ = tiny_clip.train_tiny_clip(replace(recipe, zero_init_residual=True), progress=False)
    for layer in range(1, 5):
        key = f"visual.layer{layer}.0.bn3.weight"
        assert torch.allclose(live[key], torch.ones_like(live[key]), atol=1e-6), key
        assert torch.allclose(zero[key], torch.zeros_like(zero[key]), atol=1e-6), key
    assert not recipe.zero_init_residual
    assert replace(recipe, zero_init_residual=True).key() != recipe.key()


def test_a_consumer_that_stops_early_stops_the_drawing_thread():
    import threading

    from cdul.world.stream import single_batches

    batches = single_batches(0, "pretrain", 2, 1000, lambda singles: len(singles), ahead=2)
    assert next(batches) == 2
    batches.close()  # the training loop broke off (an error, Ctrl-C)
    assert not [t for t in threading.enumerate() if t.name == "world-singles"]


def test_an_error_while_drawing_reaches_the_training_loop():
    from cdul.world.stream import single_batches

    def encode(singles):
        raise ValueError("cannot draw")

    with pytest.raises(ValueError, match="cannot draw"):
        list(single_batches(0, "pretrain", 2, 5, encode, ahead=2))
