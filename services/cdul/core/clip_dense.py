"""Dense CLIP embeddings from a ResNet tower in one forward (MaskCLIP, ECCV 2022).

A ResNet CLIP ends in an attention pool (open_clip's ``AttentionPool2d``): the mean of
the layer-4 map, plus positional embeddings, is the query of one multi-head attention
over the map's cells, whose output projection gives the image embedding. MaskCLIP
observes that the attention's *value* path, applied to each cell alone (``c_proj(
v_proj(x_cell))``), lands in the same joint embedding space: a text prompt's cosine with
it scores that cell. No query/key, so no positional embedding, on the dense path.

:func:`dense_embeddings` returns, per image, the global embedding first and then one
embedding per cell (row-major): the layout of a "whole image + snippets" request, so
the rest of the service (Eq. 1-6) does not change. At the model's input size the global
embedding IS ``encode_image``'s (the same attention pool on the same map; tested). At
another size the pool's positional embedding is resized bicubically to the map (the
usual way to run CLIP above its training resolution), which is not the native global.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from open_clip.modified_resnet import ModifiedResNet

from cdul.core.errors import ConfigError


def check_dense(visual: torch.nn.Module, model_name: str) -> ModifiedResNet:
    """The tower, if it has the attention pool dense scores need; else a ConfigError."""
    if not isinstance(visual, ModifiedResNet):
        raise ConfigError(
            f"snippet spec 'dense' needs a ResNet CLIP (an attention-pool tower such as RN50); "
            f"{model_name} has a {type(visual).__name__} image tower: use grid:RxC or patch:K"
        )
    return visual


def feature_map(visual: ModifiedResNet, pixels: torch.Tensor) -> torch.Tensor:
    """The layer-4 map ``(N, C, H/32, W/32)``: ``ModifiedResNet.forward`` without the pool."""
    x = visual.stem(pixels)
    for layer in (visual.layer1, visual.layer2, visual.layer3, visual.layer4):
        x = layer(x)
    return x


def attention_pool(visual: ModifiedResNet, x: torch.Tensor) -> torch.Tensor:
    """The global embedding of map ``x``: the tower's own pool at its native map size,
    else the same attention with the positional embedding resized to the map."""
    pool = visual.attnpool
    n, channels, h, w = x.shape
    native = pool.positional_embedding.shape[0] - 1
    if h * w == native and h == w:
        return pool(x)
    side = math.isqrt(native)
    grid = pool.positional_embedding[1:].reshape(1, side, side, channels).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=(h, w), mode="bicubic", align_corners=False)
    position = torch.cat(
        [pool.positional_embedding[:1], grid.permute(0, 2, 3, 1).reshape(h * w, channels)]
    ).to(x.dtype)
    # AttentionPool2d.forward (open_clip 3.x) with ``position`` for its fixed embedding.
    tokens = x.reshape(n, channels, h * w).permute(2, 0, 1)
    tokens = torch.cat([tokens.mean(dim=0, keepdim=True), tokens]) + position[:, None, :]
    out, _ = F.multi_head_attention_forward(
        query=tokens, key=tokens, value=tokens, embed_dim_to_check=channels,
        num_heads=pool.num_heads, q_proj_weight=pool.q_proj.weight,
        k_proj_weight=pool.k_proj.weight, v_proj_weight=pool.v_proj.weight, in_proj_weight=None,
        in_proj_bias=torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]),
        bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0,
        out_proj_weight=pool.c_proj.weight, out_proj_bias=pool.c_proj.bias,
        use_separate_proj_weight=True, training=False, need_weights=False,
    )  # fmt: skip
    return out[0]


def dense_embeddings(visual: ModifiedResNet, pixels: torch.Tensor) -> torch.Tensor:
    """``(N, 1 + H*W, D)``: the global embedding, then each map cell's (row-major)."""
    x = feature_map(visual, pixels)
    pool = visual.attnpool
    cells = x.flatten(2).transpose(1, 2)  # (N, H*W, C)
    dense = pool.c_proj(pool.v_proj(cells))
    return torch.cat([attention_pool(visual, x)[:, None], dense], dim=1)
