"""The trainer's settings: one dataclass, the command line that fills it, resume checks.

Every setting that changes the numbers a run produces is part of :class:`TrainConfig`
and is stored in the run (``training/config.json`` and every checkpoint). Rerunning a
command resumes only when those settings match (``epochs`` may grow: that extends a
finished run); settings that only change how fast or how loudly it runs
(:data:`RUNTIME_FIELDS`) may differ.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, fields
from typing import Any

from cdul.core.classifier import SUPPORTED_ARCHS
from cdul.core.errors import ConfigError
from cdul.core.method.alignment import DEFAULT_EPS, DEFAULT_SIGMA

#: Which stored pseudo-label vector the classifier learns from: ``final`` (Eq. 7, the
#: method) or ``global`` (Eq. 2 alone, the study's baseline).
LABEL_VECTORS = ("final", "global", "aggregate")
#: Which logits drive the label update: each image's own training step (free, the
#: study's code) or an eval-mode pass over the training images after the epoch.
UPDATE_LOGITS = ("step", "eval")
#: Settings that may change between a run and its resumption.
RUNTIME_FIELDS = frozenset({"epochs", "num_workers", "progress", "archive", "device", "threshold"})


@dataclass(frozen=True)
class TrainConfig:
    labels: str
    images: str
    output: str
    val: str | None = None
    arch: str = "resnet101"
    backbone_weights: str = "imagenet"
    label_vector: str = "final"
    epochs: int = 20
    batch_size: int = 8
    lr: float = 1e-5
    weight_decay: float = 0.0
    image_size: int = 224
    update_every: int = 1
    warmup_epochs: int = 0
    sigma: float = DEFAULT_SIGMA
    label_step: float = 1.0
    eps: float = DEFAULT_EPS
    align: bool = True
    update_logits: str = "step"
    seed: int = 0
    device: str = "auto"
    amp: bool | None = None
    channels_last: bool | None = None
    num_workers: int = 0
    progress: bool = True
    archive: bool = True
    model_name: str = "cdul"
    #: The served classifier's default decision threshold; None: the one with the best
    #: micro-F1 on ``val`` (when it has ground truth), else 0.5.
    threshold: float | None = None

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
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"--device must be auto, cpu or cuda, got {self.device!r}")

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
        mine = self.to_json()
        return [
            f"{name}: checkpoint has {stored.get(name)!r}, this command {mine[name]!r}"
            for name in mine
            if name not in RUNTIME_FIELDS and stored.get(name) != mine[name]
        ]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("labels", help="pseudo-label run URI (file://DIR or s3://BUCKET/RUN)")
    parser.add_argument("images", help="the images the labels are for: voc:ROOT:split, ...")
    parser.add_argument("--val", help="validation dataset spec with ground truth (val mAP)")
    parser.add_argument(
        "--output", help="run URI for training/ and model-store/ (default: the labels run)"
    )
    parser.add_argument("--arch", default="resnet101", choices=SUPPORTED_ARCHS)
    parser.add_argument(
        "--backbone-weights",
        default="imagenet",
        help="imagenet (torchvision's, needs network or its cache), a state_dict PATH, or none",
    )
    parser.add_argument(
        "--train-on",
        dest="label_vector",
        default="final",
        choices=LABEL_VECTORS,
        help="pseudo-label vector to train on (global: the study's baseline)",
    )
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-5, help="Adam learning rate")
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--image-size", type=int, default=224)
    align = parser.add_argument_group("gradient alignment (Eq. 8)")
    align.add_argument(
        "--update-every", type=int, default=1, metavar="F", help="epochs between label updates"
    )
    align.add_argument("--warmup-epochs", type=int, default=0, help="epochs before the first")
    align.add_argument("--sigma", type=float, default=DEFAULT_SIGMA, help="width of psi")
    align.add_argument(
        "--label-step", type=float, default=1.0, help="pseudo-label step size (0: no update)"
    )
    align.add_argument("--eps", type=float, default=DEFAULT_EPS, help="clamp before logit")
    align.add_argument(
        "--update-logits",
        default="step",
        choices=UPDATE_LOGITS,
        help="logits for the update: each image's training step, or an eval-mode pass",
    )
    align.add_argument(
        "--no-align", dest="align", action="store_false", help="never update the pseudo labels"
    )
    run = parser.add_argument_group("execution")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    run.add_argument(
        "--amp",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="mixed precision (default: on with CUDA)",
    )
    run.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="channels_last memory format (default: on with CUDA)",
    )
    run.add_argument("--num-workers", type=int, default=0, help="DataLoader workers")
    run.add_argument("--no-progress", dest="progress", action="store_false")
    run.add_argument(
        "--no-archive", dest="archive", action="store_false", help="skip the TorchServe .mar"
    )
    run.add_argument("--model-name", default="cdul", help="TorchServe model name")
    run.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="the archive's default decision threshold (default: the best micro-F1 on --val "
        "when it has ground truth, else 0.5)",
    )


def from_args(args: argparse.Namespace) -> TrainConfig:
    names = {f.name for f in fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in names}
    values["output"] = args.output or args.labels
    return TrainConfig(**values)
