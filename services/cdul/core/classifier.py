"""The multi-label classifier: a torchvision ResNet with one logit per class.

One factory for every stage that builds the network (the trainer, the archive
builder, the TorchServe handler, tests), so a state_dict saved by one loads into the
module another builds. Probabilities are ``sigmoid(logits)``, one independent yes/no
per class: multi-label, never a softmax over classes.
"""

from __future__ import annotations

import torchvision
from torch import nn

from cdul.core.errors import ConfigError

__all__ = ["SUPPORTED_ARCHS", "build_classifier"]

#: Architectures the trainer and the server accept: torchvision ResNets, whose head is
#: the ``fc`` layer. (ResNet-101 is the paper's; ResNet-18 keeps tests fast.)
SUPPORTED_ARCHS: tuple[str, ...] = ("resnet18", "resnet34", "resnet50", "resnet101")


def build_classifier(arch: str, num_classes: int) -> nn.Module:
    """A randomly initialised ``arch`` whose ``fc`` outputs ``num_classes`` logits.

    No weights are downloaded (``weights=None``): pretrained backbone weights, when
    used, are loaded by the caller from a local state_dict before training.
    """
    if arch not in SUPPORTED_ARCHS:
        raise ConfigError(
            f"unsupported classifier architecture {arch!r}: expected one of "
            + ", ".join(SUPPORTED_ARCHS)
        )
    if num_classes < 1:
        raise ConfigError(f"a classifier needs at least one class, got {num_classes}")
    model = torchvision.models.get_model(arch, weights=None)
    # Replacing the head (rather than get_model(num_classes=...)) keeps the backbone's
    # parameter names identical to torchvision's, so ImageNet-format weights load
    # into everything but fc.
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    return model
