"""Pre-training the embedded world's tiny CLIP with open_clip's own ``ClipLoss``.

The model is ``cdul-tiny-rn`` (``core/model_configs/cdul-tiny-rn.json``: a
ModifiedResNet vision tower at 64 px, width 16, layers [1, 1, 1, 1]; a 2-layer text
transformer of width 128, context 16; embed dim 128; initial logit scale 30). It is
trained contrastively on captioned single objects drawn on the fly, and saved as a
state_dict that ``open_clip.create_model_and_transforms("cdul-tiny-rn",
pretrained=PATH)`` loads, so the rest of the system treats it like RN50/openai.

Deterministic for a fixed seed and thread count (both part of the cache key) on one
machine; machines whose CPUs take other kernels train slightly different weights. The
default recipe's model (seed 0) is therefore shipped (``world/shipped.py``): every
checkout expands the same weights instead of training them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import open_clip
import torch
from tqdm import tqdm

from cdul.core.clip_models import MODEL_CONFIG_DIR, create_clip
from cdul.world import cache, shipped
from cdul.world.generator import Single
from cdul.world.stream import single_batches

MODEL_NAME = "cdul-tiny-rn"


@dataclass(frozen=True)
class TinyClipRecipe:
    """Everything that determines the tiny CLIP's weights."""

    # Measured on seed 11, the worst of the eleven the seeds benchmark trains
    # (benchmarks/world_seeds.py; final pseudo-label mAP on 300 held-out scenes): the old
    # recipe (1,000 steps, lr 2e-3, 50 warm-up, zero-initialised blocks, decay on the
    # embedding) 0.50x the median; live blocks + lr 1e-3 + 100 warm-up + 800 steps 0.727;
    # without decay on the embedding 0.755; 1,200 steps 0.863; batch 128 x 600 steps
    # (the same singles, 19% less time) 0.879. Over seeds 0-9 and 11 the worst is 0.95x
    # the median (benchmarks/results/world_seeds_cpu_fp32.csv).
    steps: int = 600
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 100
    # open_clip zero-initialises the last BatchNorm of every residual block (as
    # torchvision's zero_init_residual=True): each block starts as the identity. With one
    # block per stage the tower then starts as its stem plus 1x1 shortcuts, which see
    # colour but hardly shape, and on some seeds the blocks woke up too late: shape
    # top-1 0.39 (seed 8) against 0.94 (seed 9) after 1,000 steps, colour >= 0.99 on all.
    # Live blocks (False) learn shape from the first step on every seed.
    zero_init_residual: bool = False
    # Weight decay on the token embedding shrinks the rows of the ~49,000 tokens the
    # captions never use as much as the rest; without it those rows keep their initial
    # values, so the shipped weights (world/shipped.py) need only the rows the captions
    # use: 3.7 MB instead of 31.
    embedding_decay: bool = False
    seed: int = 0
    threads: int = 2

    def key(self) -> str:
        config = (MODEL_CONFIG_DIR / f"{MODEL_NAME}.json").read_text(encoding="utf-8")
        return cache.cache_key("tiny-clip", {"recipe": asdict(self), "config": config})


def checkpoint_path(recipe: TinyClipRecipe, directory: Path | None = None) -> Path:
    return (directory or cache.cache_dir()) / f"{recipe.key()}.pt"


def ensure_tiny_clip(
    recipe: TinyClipRecipe | None = None, directory: Path | None = None, progress: bool = True
) -> Path:
    """The cached checkpoint for ``recipe``: expanded from the shipped weights when the
    recipe has them (``world/shipped.py``), else trained first if it is not there."""
    recipe = recipe or TinyClipRecipe()
    path = checkpoint_path(recipe, directory)
    if cache.load_summary(path) is not None:
        return path
    found = shipped.read(
        shipped.shipped_path(recipe.key()), lambda: initial_token_embedding(recipe.seed)
    )
    state, summary = found or train_tiny_clip(recipe, progress=progress)
    cache.save_atomic(state, path, summary)
    return path


def initial_token_embedding(seed: int) -> torch.Tensor:
    """The token embedding as ``train_tiny_clip`` starts it for ``seed`` (the global
    RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = create_clip(MODEL_NAME, None).model
        return model.token_embedding.weight.detach().clone()


def _lr_at(step: int, recipe: TinyClipRecipe) -> float:
    if step < recipe.warmup_steps:
        return recipe.lr * (step + 1) / recipe.warmup_steps
    done = (step - recipe.warmup_steps) / max(1, recipe.steps - recipe.warmup_steps)
    return 0.5 * recipe.lr * (1 + math.cos(math.pi * done))


def train_tiny_clip(
    recipe: TinyClipRecipe, progress: bool = True
) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    """Train from scratch; returns the state_dict and a summary (recipe, final loss)."""
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(recipe.threads)
    try:
        torch.manual_seed(recipe.seed)
        clip = create_clip(MODEL_NAME, None)
        model = clip.model.train()
        if not recipe.zero_init_residual:
            _live_residual_blocks(model.visual)
        loss_fn = open_clip.ClipLoss()

        def decays(name: str, parameter: torch.nn.Parameter) -> bool:
            if name == "token_embedding.weight" and not recipe.embedding_decay:
                return False
            return parameter.ndim >= 2 and "logit" not in name

        named = list(model.named_parameters())
        decay = [p for n, p in named if decays(n, p)]
        rest = [p for n, p in named if not decays(n, p)]
        optimiser = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": recipe.weight_decay},
                {"params": rest, "weight_decay": 0.0},
            ],
            lr=recipe.lr,
        )

        def encode(singles: Sequence[Single]) -> tuple[torch.Tensor, torch.Tensor]:
            images = torch.stack([clip.preprocess(s.image) for s in singles])
            return images, clip.tokenizer([s.caption for s in singles])

        batches = single_batches(recipe.seed, "pretrain", recipe.batch_size, recipe.steps, encode)
        bar = tqdm(batches, desc="tiny CLIP", unit="step", disable=not progress)
        running = float("nan")
        for step, (images, texts) in enumerate(bar):
            for group in optimiser.param_groups:
                group["lr"] = _lr_at(step, recipe)
            image_features = model.encode_image(images, normalize=True)
            text_features = model.encode_text(texts, normalize=True)
            loss = loss_fn(image_features, text_features, model.logit_scale.exp())
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            with torch.no_grad():  # as in CLIP: keep the temperature multiplier <= 100
                model.logit_scale.clamp_(0, math.log(100))
            running = loss.item() if math.isnan(running) else 0.95 * running + 0.05 * loss.item()
            bar.set_postfix(loss=f"{running:.3f}", scale=f"{model.logit_scale.exp().item():.1f}")
        model.eval()
        summary = {
            "model": MODEL_NAME,
            "recipe": asdict(recipe),
            "final_loss_ema": running,
            "logit_scale_exp": model.logit_scale.exp().item(),
        }
        return {k: v.detach().clone() for k, v in model.state_dict().items()}, summary
    finally:
        torch.set_num_threads(previous_threads)


def _live_residual_blocks(visual: torch.nn.Module) -> None:
    """Undo open_clip's zero init of each residual block's last BatchNorm scale (to 1,
    PyTorch's default), so every block contributes from the first step."""
    with torch.no_grad():
        for name, module in visual.named_modules():
            if name.startswith("layer") and name.endswith("bn3"):
                module.weight.fill_(1.0)
