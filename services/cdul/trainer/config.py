"""The trainer's settings: one dataclass, the command line that fills it, resume checks.

Every setting that changes the numbers a run produces is part of :class:`TrainConfig`
and is stored in the run (``training/config.json`` and every checkpoint). Rerunning a
command resumes only when those settings match (``epochs`` may grow: that extends a
finished run); settings that only change how fast or how loudly it runs
(:data:`RUNTIME_FIELDS`) may differ.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from typing import Any

from cdul.core import settings
from cdul.core.classifier import SUPPORTED_ARCHS
from cdul.core.errors import ConfigError
from cdul.core.method.alignment import DEFAULT_EPS, DEFAULT_SIGMA
from cdul.core.pseudo_labels import LABEL_VECTORS
from cdul.core.settings import add_flags, differences, setting

# Which stored pseudo-label vector the classifier learns from (LABEL_VECTORS): ``final``
# (Eq. 7, the method) or ``global`` (Eq. 2 alone, the study's baseline).
#: Which logits drive the label update: each image's own training step (free, the
#: study's code) or an eval-mode pass over the training images after the epoch.
UPDATE_LOGITS = ("step", "eval")
#: Settings that may change between a run and its resumption.
RUNTIME_FIELDS = frozenset({"epochs", "num_workers", "progress", "archive", "device", "threshold"})


ALIGN = "gradient alignment (Eq. 8)"
RUN = "execution"


@dataclass(frozen=True)
class TrainConfig:
    labels: str
    images: str
    output: str
    val: str | None = setting(None, "validation dataset spec with ground truth (val mAP)")
    arch: str = setting("resnet101", "classifier architecture", choices=SUPPORTED_ARCHS)
    backbone_weights: str = setting(
        "imagenet",
        "imagenet (torchvision's, needs network or its cache), a state_dict PATH, or none",
    )
    label_vector: str = setting(
        "final",
        "pseudo-label vector to train on (global: the study's baseline)",
        flag="--train-on",
        choices=LABEL_VECTORS,
    )
    epochs: int = setting(20, "epochs")
    batch_size: int = setting(8, "images per step")
    lr: float = setting(1e-5, "Adam learning rate")
    weight_decay: float = setting(0.0, "Adam weight decay")
    image_size: int = setting(224, "input side in pixels")
    update_every: int = setting(1, "epochs between label updates", group=ALIGN, metavar="F")
    warmup_epochs: int = setting(0, "epochs before the first", group=ALIGN)
    sigma: float = setting(DEFAULT_SIGMA, "width of psi", group=ALIGN)
    label_step: float = setting(1.0, "pseudo-label step size (0: no update)", group=ALIGN)
    eps: float = setting(DEFAULT_EPS, "clamp before logit", group=ALIGN)
    align: bool = setting(True, "never update the pseudo labels", group=ALIGN)
    update_logits: str = setting(
        "step",
        "logits for the update: each image's training step, or an eval-mode pass",
        group=ALIGN,
        choices=UPDATE_LOGITS,
    )
    hold_out: str | None = setting(
        None,
        "K/N: train without fold K (0-based) of N, folds by a hash of the image id, and "
        "write the held-out images' predictions (cdul cross-fit runs every fold)",
        metavar="K/N",
    )
    seed: int = setting(0, "random seed", group=RUN)
    device: str = setting("auto", "auto (CUDA when present), cpu or cuda", group=RUN,
                          choices=("auto", "cpu", "cuda"))  # fmt: skip
    amp: bool | None = setting(None, "mixed precision (default: on with CUDA)", group=RUN)
    channels_last: bool | None = setting(
        None, "channels_last memory format (default: on with CUDA)", group=RUN
    )
    num_workers: int = setting(0, "DataLoader workers", group=RUN)
    progress: bool = setting(True, "no progress bar", group=RUN)
    archive: bool = setting(True, "skip the TorchServe .mar", group=RUN)
    model_name: str = setting("cdul", "TorchServe model name", group=RUN)
    #: One decision threshold for every class in the archive; None: each class its own,
    #: chosen without ground truth (trainer/thresholds.py).
    threshold: float | None = setting(
        None,
        "one decision threshold for every class in the archive (default: each class its "
        "own, chosen without ground truth from the hard pseudo labels)",
        group=RUN,
        type=float,
    )

    def __post_init__(self) -> None:
        if self.arch not in SUPPORTED_ARCHS:
            raise ConfigError(f"--arch must be one of {', '.join(SUPPORTED_ARCHS)}")
        if self.label_vector not in LABEL_VECTORS:
            raise ConfigError(f"--train-on must be one of {', '.join(LABEL_VECTORS)}")
        positive = {
            "epochs": self.epochs,
            "batch-size": self.batch_size,
            "image-size": self.image_size,
            "update-every": self.update_every,
        }
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"--{name} must be >= 1, got {value}")
        if self.lr <= 0 or self.sigma <= 0 or not 0 < self.eps < 0.5:
            raise ConfigError("--lr and --sigma must be positive and --eps within (0, 0.5)")
        if self.label_step < 0 or self.warmup_epochs < 0 or self.num_workers < 0:
            raise ConfigError("--label-step, --warmup-epochs and --num-workers must be >= 0")
        if self.update_logits not in UPDATE_LOGITS:
            raise ConfigError(f"--update-logits must be one of {', '.join(UPDATE_LOGITS)}")
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"--threshold must be within [0, 1], got {self.threshold}")
        if self.hold_out is not None:
            fold_of(self.hold_out)  # refuses a malformed K/N
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"--device must be auto, cpu or cuda, got {self.device!r}")

    @property
    def fold(self) -> tuple[int, int] | None:
        """``(K, N)`` of ``--hold-out K/N``, None without one."""
        return None if self.hold_out is None else fold_of(self.hold_out)

    def updates_labels_in(self, epoch: int) -> bool:
        """Whether the pseudo labels are aligned at the end of 0-based ``epoch``: from
        epoch ``warmup_epochs`` on, every ``update_every`` epochs (F = 1: every epoch)."""
        return (
            self.align
            and self.label_step > 0
            and epoch >= self.warmup_epochs
            and (epoch - self.warmup_epochs) % self.update_every == 0
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def resume_conflicts(self, stored: dict[str, Any]) -> list[str]:
        """Settings in which this config differs from a checkpoint's, runtime ones aside."""
        return differences(stored, self.to_json(), ignore=RUNTIME_FIELDS,
                           stored_as="checkpoint has", current_as="this command")  # fmt: skip


def fold_of(text: str) -> tuple[int, int]:
    """``"K/N"`` -> ``(K, N)`` with ``0 <= K < N`` and ``N >= 2``."""
    try:
        k, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise ConfigError(f"--hold-out must be K/N (e.g. 0/2), got {text!r}") from None
    if n < 2 or not 0 <= k < n:
        raise ConfigError(f"--hold-out {text}: need N >= 2 folds and 0 <= K < N")
    return k, n


#: Named recipes (torchvision's references: the command behind each number). A preset
#: replaces TrainConfig's defaults; flags given on the command line still win.
PRESETS: dict[str, dict[str, Any]] = {
    # The study's Table 3 (TrainConfig's defaults): ResNet-101 from ImageNet, Adam 1e-5,
    # batch 8, 224 px, labels updated every epoch.
    "paper": {},
    # The embedded world: ResNet-18 from the world's backbone (pass --backbone-weights),
    # small scenes, a short schedule with a 2-epoch warm-up and updates every 5 epochs.
    "world": {
        "arch": "resnet18", "image_size": 128, "batch_size": 16, "lr": 1e-4, "epochs": 10,
        "update_every": 5, "warmup_epochs": 2, "label_step": 1.0,
    },
}  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("labels", help="pseudo-label run URI (file://DIR or s3://BUCKET/RUN)")
    parser.add_argument("images", help="the images the labels are for: voc:ROOT:split, ...")
    parser.add_argument(
        "--output", help="run URI for training/ and model-store/ (default: the labels run)"
    )
    parser.add_argument(
        "--preset",
        default="paper",
        choices=sorted(PRESETS),
        help="a named recipe replacing the defaults below; flags still win (default: paper)",
    )
    add_flags(parser, TrainConfig)


def from_args(args: argparse.Namespace) -> TrainConfig:
    return settings.from_args(
        TrainConfig, args, PRESETS[args.preset], output=args.output or args.labels
    )
