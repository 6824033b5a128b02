"""The dense snippet spec: boxes by hand, and dense embeddings against open_clip's own
modules (RN50's architecture with random weights: no download)."""

import copy

import pytest
import torch

from cdul.core.clip_dense import attention_pool, check_dense, dense_embeddings, feature_map
from cdul.core.clip_models import create_clip
from cdul.core.errors import ConfigError
from cdul.core.method.snippets import DenseSpec, parse_snippet_spec


def test_dense_specs_parse_and_count():
    assert parse_snippet_spec("dense") == DenseSpec()
    assert parse_snippet_spec("Dense:448") == DenseSpec(448) and str(DenseSpec(448)) == "dense:448"
    assert DenseSpec(448).count(500, 375) == 196  # 14 x 14 cells
    assert DenseSpec().at(224) == DenseSpec(224) and DenseSpec(64).at(224) == DenseSpec(64)
    with pytest.raises(ConfigError, match="multiple of 32"):
        parse_snippet_spec("dense:100")
    with pytest.raises(ConfigError, match="give dense:SIZE"):
        DenseSpec().count(500, 375)


def test_dense_boxes_are_the_cells_mapped_back_through_resize_and_crop():
    # 500x375 at 64 px: resized to 85x64 (int(64 * 500 / 375)), centre crop from x = 10
    # (round(21 / 2) = 10); 2 x 2 cells of 32 px; x scale 500/85, y scale 375/64.
    boxes = DenseSpec(64).boxes(500, 375)
    assert boxes[0] == (58, 0, 248, 188)  # 10*500/85=58.8, 42*500/85=247.06, 32*375/64=187.5
    assert boxes[1] == (247, 0, 436, 188)  # 74*500/85 = 435.29
    assert boxes[2] == (58, 187, 248, 375)  # 64*375/64 = 375
    # A square image is cut exactly.
    assert DenseSpec(128).boxes(128, 128)[:2] == [(0, 0, 32, 32), (32, 0, 64, 32)]
    assert len(DenseSpec(128).boxes(256, 128)) == 16


@pytest.fixture(scope="module")
def rn50():
    torch.manual_seed(0)
    clip = create_clip("RN50", None)
    return clip.model.visual.eval()


@torch.no_grad()
def test_global_from_the_dense_forward_is_encode_image_at_the_native_size(rn50):
    pixels = torch.randn(2, 3, 224, 224)
    out = dense_embeddings(rn50, pixels)
    assert out.shape == (2, 1 + 49, 1024)
    assert torch.allclose(out[:, 0], rn50(pixels), atol=1e-5)
    # The map is open_clip's own last intermediate.
    inter = rn50.forward_intermediates(pixels, indices=1, intermediates_only=True)
    assert torch.equal(feature_map(rn50, pixels), inter["image_intermediates"][-1])


@torch.no_grad()
def test_each_cell_is_open_clips_attention_pool_attending_to_that_cell_only(rn50):
    # MaskCLIP's reading, checked with open_clip's own AttentionPool2d: on a map whose
    # every cell is cell k (so attention, whatever its weights, averages identical
    # values) and without positional embedding, the pool outputs c_proj(v_proj(x_k)).
    pixels = torch.randn(1, 3, 224, 224)
    x = feature_map(rn50, pixels)
    dense = dense_embeddings(rn50, pixels)[0, 1:]
    pool = copy.deepcopy(rn50.attnpool)
    pool.positional_embedding.zero_()
    for k in (0, 10, 48):
        row, col = divmod(k, 7)
        tiled = x[:, :, row : row + 1, col : col + 1].expand_as(x).contiguous()
        assert torch.allclose(dense[k], pool(tiled)[0], atol=1e-4), k


@torch.no_grad()
def test_other_sizes_resize_the_positional_embedding(rn50):
    pixels = torch.randn(1, 3, 320, 320)  # a 10 x 10 map
    x = feature_map(rn50, pixels)
    out = dense_embeddings(rn50, pixels)
    assert out.shape == (1, 101, 1024)
    # The same as open_clip's pool given the resized embedding as its own.
    pool = copy.deepcopy(rn50.attnpool)
    native = pool.positional_embedding
    grid = native[1:].reshape(1, 7, 7, -1).permute(0, 3, 1, 2)
    grid = torch.nn.functional.interpolate(grid, size=(10, 10), mode="bicubic")
    pool.positional_embedding = torch.nn.Parameter(
        torch.cat([native[:1], grid.permute(0, 2, 3, 1).reshape(100, -1)])
    )
    assert torch.allclose(attention_pool(rn50, x), pool(x), atol=1e-5)
    assert torch.allclose(out[:, 0], pool(x), atol=1e-5)


def test_vit_towers_are_refused_naming_the_alternatives():
    with pytest.raises(ConfigError, match=r"needs a ResNet CLIP.*Linear image tower"):
        check_dense(torch.nn.Linear(2, 2), "ViT-B-32")
