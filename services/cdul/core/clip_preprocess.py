"""CLIP preprocessing of an image and its snippets, on the CPU (PIL) or batched on a device.

Two ways to turn the views of one image (the whole image + its snippets) into CLIP's
input, selected by name:

``pil``
    open_clip's own transform (PIL bicubic resize of the shorter side, centre crop,
    normalise). Bit-for-bit what ``open_clip`` computes; the default on CPU and what
    every equality test uses. The PIL steps run one view at a time; the to-tensor and
    normalise steps run once on all views of the image (the same elementwise float ops,
    so the same bits, without a few dozen small tensor calls per view).

``tensor``
    The image is decoded once, moved to the device once, and all snippets (which share
    one size for a given spec) are cropped by slicing and resized in a single batched
    ``interpolate(bicubic, antialias=True)`` call. The study's 16-px patches make 714
    views per VOC image; done one PIL call each, they dominate a GPU run. The pixels
    differ slightly from PIL's bicubic (a few 1e-3 in cosine; tests bound it), so it is
    the default only on CUDA, and the choice is reported in the model info.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.transform import MaybeToTensor
from PIL import Image
from torchvision.transforms import Normalize, ToTensor

from cdul.core.errors import ConfigError

Box = tuple[int, int, int, int]


class TensorPreprocess:
    """Batched crop + resize + normalise on ``device`` for one open_clip preprocess config."""

    def __init__(self, cfg: dict, device: torch.device, dtype: torch.dtype = torch.float32) -> None:
        if cfg.get("resize_mode", "shortest") != "shortest":
            raise ConfigError(
                f"tensor preprocessing supports resize_mode 'shortest', not {cfg['resize_mode']!r}"
            )
        size = cfg["size"]
        self.size = int(size if isinstance(size, int) else size[0])
        self.mode = {"bicubic": "bicubic", "bilinear": "bilinear"}[
            cfg.get("interpolation", "bicubic")
        ]
        self.mean = torch.tensor(cfg["mean"], device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg["std"], device=device).view(1, 3, 1, 1)
        self.device = device
        self.dtype = dtype

    def __call__(self, image: Image.Image, boxes: Sequence[Box]) -> torch.Tensor:
        """``(1 + len(boxes), 3, S, S)``: the whole image, then one row per box."""
        return self.on_device(self.upload(image), boxes)

    def upload(self, image: Image.Image) -> torch.Tensor:
        """The host's part: the decoded image's ``(H, W, 3)`` uint8 pixels, on the device."""
        return torch.from_numpy(np.array(image.convert("RGB"))).to(self.device)

    def on_device(self, pixels: torch.Tensor, boxes: Sequence[Box]) -> torch.Tensor:
        """The device's part: crop, resize and normalise the uploaded pixels."""
        pixels = pixels.permute(2, 0, 1).float().div_(255.0)  # (3, H, W)
        whole = self._resize_crop(pixels[None])
        if not boxes:
            return whole
        sizes = {(r - left, b - t) for left, t, r, b in boxes}
        if len(sizes) != 1:  # grid and patch specs always cut equal boxes
            raise ValueError(f"tensor preprocessing needs equal snippet sizes, got {sorted(sizes)}")
        crops = torch.stack([pixels[:, t:b, left:r] for left, t, r, b in boxes])
        return torch.cat([whole, self._resize_crop(crops)])

    def _resize_crop(self, batch: torch.Tensor) -> torch.Tensor:
        # Sizes and crop offsets as torchvision's Resize(int) and CenterCrop compute them.
        h, w = batch.shape[-2:]
        if h <= w:
            new_h, new_w = self.size, int(self.size * w / h)
        else:
            new_h, new_w = int(self.size * h / w), self.size
        if (new_h, new_w) != (h, w):
            batch = F.interpolate(
                batch, size=(new_h, new_w), mode=self.mode, antialias=True, align_corners=False
            )
        top = round((new_h - self.size) / 2.0)
        left = round((new_w - self.size) / 2.0)
        batch = batch[..., top : top + self.size, left : left + self.size].clamp_(0.0, 1.0)
        # PIL resizes to 8-bit pixels; rounding the same way halves the gap to open_clip.
        batch = batch.mul_(255.0).round_().div_(255.0)
        return ((batch - self.mean) / self.std).to(self.dtype)


@functools.lru_cache(maxsize=16)  # one per loaded model; asked once per image
def _split_transform(preprocess: Callable) -> tuple[tuple[Callable, ...], Normalize] | None:
    """``(PIL steps, Normalize)`` when ``preprocess`` is ``Compose([*PIL steps, ToTensor,
    Normalize])`` (open_clip's eval transform), else None.

    Why the transform is taken apart instead of rebuilt from the model's public
    ``open_clip.get_model_preprocess_cfg``: the callers hand over the transform, not the
    model, and rebuilding would re-implement open_clip's config-to-steps mapping. That
    mapping is itself internal: the eval steps are resize and crop *before* the RGB
    conversion (a palette image resized first is resampled nearest-neighbour by PIL, so
    the order changes the bits), and resize modes other than ``shortest`` use open_clip's
    private ``ResizeKeepRatio`` / ``CenterCropOrPad``. Rebuilt steps would drift from
    open_clip's transform silently on an upgrade; these are open_clip's own step objects,
    and any transform of another shape falls back to being applied per view, exactly."""
    steps = list(getattr(preprocess, "transforms", []))
    if (
        len(steps) >= 2
        and type(steps[-2]) in (ToTensor, MaybeToTensor)
        and type(steps[-1]) is Normalize
        and not steps[-1].inplace
    ):
        return tuple(steps[:-2]), steps[-1]
    return None


def pil_views(
    preprocess: Callable[[Image.Image], torch.Tensor], image: Image.Image, boxes: Sequence[Box]
) -> torch.Tensor:
    """open_clip's transform on the whole image and each crop: ``(1 + len(boxes), 3, S, S)``."""
    crops = [image, *(image.crop(b) for b in boxes)]
    split = _split_transform(preprocess)
    if split is None:
        return torch.stack([preprocess(view) for view in crops])
    pil_steps, normalize = split
    views = crops
    for step in pil_steps:
        views = [step(view) for view in views]
    if any(v.mode != "RGB" or v.size != views[0].size for v in views):
        return torch.stack([preprocess(view) for view in crops])
    # torchvision's to_tensor and normalize, on all views at once: uint8 HWC -> float CHW
    # / 255, then (x - mean) / std per channel.
    pixels = torch.from_numpy(np.stack([np.asarray(v, dtype=np.uint8) for v in views]))
    pixels = pixels.permute(0, 3, 1, 2).contiguous().to(torch.get_default_dtype()).div(255)
    mean = torch.as_tensor(normalize.mean, dtype=pixels.dtype).view(1, -1, 1, 1)
    std = torch.as_tensor(normalize.std, dtype=pixels.dtype).view(1, -1, 1, 1)
    return pixels.sub_(mean).div_(std)


PREPROCESSORS = ("pil", "tensor")
