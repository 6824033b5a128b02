"""One factory for CLIP models: open_clip names + pretrained tags or local checkpoints.

The project's own model configs (``core/model_configs/*.json``, e.g. the embedded
world's ``cdul-tiny-rn``) are registered with open_clip first, so a tiny CLIP trained
here loads exactly like ``RN50`` with ``openai`` weights::

    create_clip("RN50", "openai")                     # open_clip's tag (needs its cache)
    create_clip("RN50", "/models/rn50-openai.pt")     # a local checkpoint
    create_clip("cdul-tiny-rn", "/cache/tiny.pt")     # the embedded world's CLIP
    create_clip("RN50", None)                         # random weights (tests)
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch

from cdul.core.errors import ConfigError

MODEL_CONFIG_DIR = Path(__file__).with_name("model_configs")


@functools.cache
def register_project_configs() -> tuple[str, ...]:
    """Register every JSON config in :data:`MODEL_CONFIG_DIR` with open_clip (once)."""
    open_clip.add_model_config(MODEL_CONFIG_DIR)
    return tuple(sorted(p.stem for p in MODEL_CONFIG_DIR.glob("*.json")))


@dataclass
class Clip:
    """A loaded CLIP: the model in eval mode, its preprocessing and its tokenizer."""

    model: torch.nn.Module
    preprocess: Any
    tokenizer: Any
    name: str
    pretrained: str
    image_size: int
    embed_dim: int
    weights_file: str | None = None
    """The local checkpoint the weights were loaded from (None: a pretrained tag or random)."""

    @functools.cached_property
    def weights_digest(self) -> str:
        """sha256 of :attr:`weights_file` ("" without one): stored image embeddings are
        tied to it. Hashed when first asked (the service's first GetModelInfo), not at
        load: a 400 MB checkpoint takes about a second."""
        return file_digest(self.weights_file) if self.weights_file else ""

    @property
    def logit_scale(self) -> torch.Tensor:
        """The stored log-scale; the softmax multiplier is its exponential."""
        return self.model.logit_scale.detach()


def create_clip(
    model_name: str,
    pretrained: str | None,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
) -> Clip:
    """Load ``model_name`` with weights from a tag, a local path, or none (random)."""
    register_project_configs()
    if model_name not in open_clip.list_models():
        raise ConfigError(
            f"unknown CLIP model {model_name!r}; open_clip knows e.g. RN50, ViT-B-32, and this "
            f"project adds {', '.join(register_project_configs())}"
        )
    looks_like_path = pretrained is not None and ("/" in pretrained or pretrained.endswith(".pt"))
    if looks_like_path and not Path(pretrained).is_file():
        raise ConfigError(f"CLIP checkpoint {pretrained!r} does not exist")
    try:
        with _quiet_about_random_weights(pretrained is None):
            model, _, preprocess = open_clip.create_model_and_transforms(
                model_name, pretrained=pretrained, device=device, precision=precision
            )
    except RuntimeError as error:  # open_clip raises RuntimeError for unknown tags
        raise ConfigError(
            f"cannot load CLIP {model_name} weights {pretrained!r}: {error}"
        ) from error
    except OSError as error:  # a tag whose download failed (no network here)
        raise ConfigError(
            f"cannot fetch CLIP {model_name} weights {pretrained!r} ({error}); on an offline "
            "machine pass a local checkpoint path instead"
        ) from error
    model.eval()
    image_size = model.visual.image_size
    return Clip(
        model=model,
        preprocess=preprocess,
        tokenizer=open_clip.get_tokenizer(model_name),
        name=model_name,
        pretrained=pretrained or "random",
        image_size=int(image_size[0] if isinstance(image_size, tuple) else image_size),
        # The config's embed_dim (the size both towers project to), not the model's
        # text_projection: an open_clip internal that is a matrix in some models, an
        # nn.Linear or absent in others. create_clip only loads registered configs.
        embed_dim=int(open_clip.get_model_config(model_name)["embed_dim"]),
        weights_file=pretrained if looks_like_path else None,
    )


def file_digest(path: str | Path) -> str:
    """sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


class _RandomWeightsWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Model initialized randomly" not in record.getMessage()


@contextlib.contextmanager
def _quiet_about_random_weights(asked: bool) -> Iterator[None]:
    """open_clip warns (on the root logger) when a model gets no pretrained weights;
    when the caller asked for random weights (training the world's CLIP, tests) that
    warning only alarms whoever reads the console."""
    if not asked:
        yield
        return
    quiet = _RandomWeightsWarning()
    logging.getLogger().addFilter(quiet)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(quiet)
