"""The classifier's evaluation transform: one definition for the trainer and the server.

The trainer evaluates with :func:`eval_transform` and the TorchServe handler
preprocesses every request with the very same function (the archive records its
arguments), so a served prediction is the prediction the trainer measured. Change it
here and both sides change together.

Why a plain resize and no centre crop: this is a *multi-label* classifier. A centre
crop throws away the image borders, and with them objects that sit at the edges
(a third of a 3x3 scene layout); squashing the whole image to a square keeps every
object, at the cost of some aspect distortion that training sees too.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.transforms import v2

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "eval_transform"]

#: Per-channel statistics of ImageNet, what torchvision's pretrained weights expect.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def eval_transform(
    image_size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> v2.Compose:
    """RGB PIL image -> normalised ``float32`` tensor of shape ``(3, image_size, image_size)``.

    The resize runs on the PIL image (PIL's antialiased bilinear filter) before the
    conversion to a tensor: it is the cheapest order for large photos, and the result
    depends only on the pixels, never on the batch the image ends up in.
    """
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean and std need 3 values (RGB), got {list(mean)} and {list(std)}")
    if any(s <= 0 for s in std):
        raise ValueError(f"std values must be positive, got {list(std)}")
    return v2.Compose(
        [
            v2.Resize((image_size, image_size), interpolation=v2.InterpolationMode.BILINEAR),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(mean), list(std)),
        ]
    )
