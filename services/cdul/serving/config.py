"""What a model archive carries besides the weights: the classifier's JSON config.

The archive (``.mar``) holds three things: the state_dict, this config (written as
:data:`CONFIG_FILE_NAME`) and the handler. The config is everything the handler needs
to rebuild the network and preprocess exactly as the trainer evaluated: architecture,
class names (their order is the order of the logits), image size and normalisation,
the default decision threshold and the pixel limit against decompression bombs.

:func:`load_classifier` is the one way to turn a state_dict + config into a ready
module; the handler, the archive builder (as a check), the tests and the P5 benchmark
all call it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cdul.core.classifier import SUPPORTED_ARCHS, build_classifier
from cdul.core.errors import ConfigError
from cdul.core.images import DEFAULT_MAX_PIXELS
from cdul.core.settings import setting
from cdul.core.transforms import IMAGENET_MEAN, IMAGENET_STD
from cdul.core.weights import load_state_dict

__all__ = [
    "CONFIG_FILE_NAME",
    "CONFIG_FORMAT",
    "ClassifierConfig",
    "load_classifier",
]

#: File name of the config inside the archive (and in the model directory TorchServe
#: extracts it to).
CONFIG_FILE_NAME = "cdul_classifier.json"
#: Bumped when a field changes meaning; the handler refuses formats it does not know.
#: Format 2 adds per-class ``thresholds``; a format 1 config (one ``threshold``) loads.
CONFIG_FORMAT = 2
SUPPORTED_FORMATS = (1, 2)


def rgb(text: str) -> tuple[float, float, float]:
    """``"0.5,0.5,0.5"`` -> three floats (a flag's type)."""
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected three comma-separated numbers, got {text!r}")
    return values[0], values[1], values[2]


@dataclass(frozen=True, kw_only=True)
class ClassifierConfig:
    """How to rebuild and feed the classifier (see the module docstring); its settings
    are ``cdul archive``'s flags."""

    arch: str = setting("resnet101", "the classifier's architecture", choices=SUPPORTED_ARCHS)
    classes: tuple[str, ...]  # kw_only: a field without a default may follow; order = JSON's
    image_size: int = setting(224, "side of the square the trainer's evaluation resized images to")
    mean: tuple[float, float, float] = setting(
        IMAGENET_MEAN, "normalisation mean R,G,B (default: ImageNet's)", type=rgb,
        metavar="R,G,B",
    )  # fmt: skip
    std: tuple[float, float, float] = setting(
        IMAGENET_STD, "normalisation std R,G,B (default: ImageNet's)", type=rgb,
        metavar="R,G,B",
    )  # fmt: skip
    threshold: float = setting(
        0.5, "the decision threshold per class in the archive; callers may override it"
    )
    max_pixels: int = setting(DEFAULT_MAX_PIXELS, "refuse images larger than this many pixels")
    thresholds: tuple[float | None, ...] | None = None
    """Per-class decision thresholds in the classes' order (None: the class is never a
    label); None: ``threshold`` for every class."""
    thresholds_from: str | None = None
    """How ``thresholds`` were chosen (e.g. label-free, calibrated on held-out images)."""
    format: int = field(default=CONFIG_FORMAT)

    def __post_init__(self) -> None:
        # Normalise sequences to tuples so a config read back from JSON compares equal.
        object.__setattr__(self, "classes", tuple(self.classes))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if self.thresholds is not None:
            object.__setattr__(
                self, "thresholds",
                tuple(None if t is None or math.isinf(t) else float(t) for t in self.thresholds),
            )  # fmt: skip
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first field that is not usable."""
        if self.format not in SUPPORTED_FORMATS:
            raise ConfigError(
                f"classifier config format {self.format} is not supported "
                f"(this code reads formats {', '.join(map(str, SUPPORTED_FORMATS))})"
            )
        if self.arch not in SUPPORTED_ARCHS:
            raise ConfigError(
                f"unsupported arch {self.arch!r}: expected one of {', '.join(SUPPORTED_ARCHS)}"
            )
        if not self.classes:
            raise ConfigError("the class list is empty")
        if any(not isinstance(c, str) or not c.strip() for c in self.classes):
            raise ConfigError("every class name must be a non-empty string")
        duplicates = sorted({c for c in self.classes if self.classes.count(c) > 1})
        if duplicates:
            raise ConfigError(f"duplicate class names: {', '.join(duplicates)}")
        if not isinstance(self.image_size, int) or self.image_size < 8:
            raise ConfigError(f"image_size must be an integer >= 8, got {self.image_size!r}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ConfigError("mean and std need three values each (R, G, B)")
        if any(not math.isfinite(s) or s <= 0 for s in self.std):
            raise ConfigError(f"std values must be positive, got {list(self.std)}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"threshold must be within [0, 1], got {self.threshold}")
        if self.max_pixels < 1:
            raise ConfigError(f"max_pixels must be positive, got {self.max_pixels}")
        if self.thresholds is not None:
            if len(self.thresholds) != len(self.classes):
                raise ConfigError(
                    f"{len(self.thresholds)} thresholds for {len(self.classes)} classes"
                )
            bad = [t for t in self.thresholds if t is not None and not 0.0 <= t <= 1.0]
            if bad:
                raise ConfigError(f"per-class thresholds must be within [0, 1], got {bad[0]}")

    def decision_thresholds(self) -> list[float]:
        """Each class's threshold, in the classes' order (infinity: never a label)."""
        if self.thresholds is None:
            return [self.threshold] * len(self.classes)
        return [math.inf if t is None else t for t in self.thresholds]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["classes"] = list(self.classes)
        data["mean"] = list(self.mean)
        data["std"] = list(self.std)
        if self.thresholds is not None:
            data["thresholds"] = list(self.thresholds)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClassifierConfig:
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"unknown classifier config fields: {', '.join(unknown)}")
        try:
            return cls(**data)
        except TypeError as error:  # a missing required field
            raise ConfigError(f"incomplete classifier config: {error}") from None

    def write(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> ClassifierConfig:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"classifier config {os.fspath(path)!r} does not exist") from None
        except json.JSONDecodeError as error:
            raise ConfigError(
                f"classifier config {os.fspath(path)!r} is not JSON: {error}"
            ) from None
        if not isinstance(data, dict):
            raise ConfigError(f"classifier config {os.fspath(path)!r} is not a JSON object")
        return cls.from_dict(data)


def load_classifier(
    state: Mapping[str, torch.Tensor] | str | os.PathLike[str],
    config: ClassifierConfig,
    device: torch.device | str = "cpu",
) -> nn.Module:
    """Build ``config.arch`` with one output per class, load ``state`` strictly, eval mode.

    A state_dict for another architecture or another number of classes is refused with
    a message naming the mismatch, not PyTorch's list of every missing key.
    """
    if not isinstance(state, Mapping):
        state = load_state_dict(state)
    model = build_classifier(config.arch, len(config.classes))
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise ConfigError(
            f"the weights do not fit a {config.arch}: {len(missing)} missing and "
            f"{len(unexpected)} unexpected tensors (e.g. {(missing or unexpected)[0]!r})"
        )
    head = state.get("fc.weight")
    if head is not None and head.shape[0] != len(config.classes):
        raise ConfigError(
            f"the weights have {head.shape[0]} outputs but {len(config.classes)} classes were given"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:  # shape mismatches inside the backbone
        first = str(error).strip().splitlines()[-1].strip()
        raise ConfigError(f"the weights do not fit a {config.arch}: {first}") from None
    return model.to(device).eval()
