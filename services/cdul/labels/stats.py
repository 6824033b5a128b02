"""Per-class numbers of a run's scores: how many images each class labels, how its
scores are spread, and a flag for a class that never fires or fires on almost every
image (usually a bad class name or template). ``cdul label-report`` prints them for a
run without ground truth and ``cdul label-gallery`` draws them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from cdul.core.errors import ConfigError
from cdul.core.settings import setting
from cdul.labels.reading import LabelReading, over_threshold

NEVER_FIRES = "never fires"
FIRES_ON_ALMOST_ALL = "fires on almost everything"
BAD_CLASS_HINT = "a sign of a bad class name or template"
HISTOGRAM_BINS = 10
FALLOFF_POINTS = 101


@dataclass(frozen=True, kw_only=True)
class StatsConfig(LabelReading):
    """What the per-class numbers are computed on (shared by the gallery and the report)."""

    almost_all: float = setting(
        0.9, "flag a class that fires on more than this share of the images",
        flag="--almost-all",
    )  # fmt: skip

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.almost_all <= 1.0:
            raise ConfigError(f"--almost-all must be within [0, 1], got {self.almost_all}")


@dataclass(frozen=True)
class ClassStats:
    """One class's scores over a run's images."""

    name: str
    images: int
    threshold: float
    """The class's decision threshold (infinity: never a label)."""
    fires: int
    """Images scored at or over the threshold."""
    mean: float
    quartiles: tuple[float, float, float, float, float]
    """Minimum, first quartile, median, third quartile, maximum (NaN without images)."""
    histogram: tuple[int, ...]
    """Images per score bin: HISTOGRAM_BINS equal bins over [0, 1], the last one closed."""
    falloff: tuple[float, ...]
    """The scores sorted high to low, read at FALLOFF_POINTS ranks from 1 to ``images``
    spaced evenly on a log scale: a class is usually on a small share of the images, so
    a linear axis would squeeze where its scores fall off into the first few pixels."""
    flag: str | None
    """NEVER_FIRES, FIRES_ON_ALMOST_ALL or None."""

    @property
    def share(self) -> float:
        return self.fires / self.images if self.images else 0.0


def class_stats(
    scores: torch.Tensor, classes: Sequence[str], thresholds: torch.Tensor, almost_all: float
) -> list[ClassStats]:
    """The numbers of each class (column of ``scores``, ``(N, C)`` in [0, 1]) with its
    threshold (``(C,)``); flagged when it fires on no image or on more than
    ``almost_all`` of them."""
    scores = scores.float()
    n = scores.shape[0]
    ascending = torch.sort(scores, dim=0).values
    bins = (scores * HISTOGRAM_BINS).long().clamp(0, HISTOGRAM_BINS - 1)
    stats = []
    # 0-based positions in the ascending column of ranks 1..n, evenly spaced in log(rank)
    ranks = [n - round(n ** (k / (FALLOFF_POINTS - 1))) for k in range(FALLOFF_POINTS)] if n else []
    chosen = over_threshold(scores, thresholds)
    for c, name in enumerate(classes):
        column = ascending[:, c].tolist()
        fires = int(chosen[:, c].sum())
        flag = None
        if n and fires == 0:
            flag = NEVER_FIRES
        elif n and fires / n > almost_all:
            flag = FIRES_ON_ALMOST_ALL
        stats.append(
            ClassStats(
                name=name,
                images=n,
                threshold=float(thresholds[c]),
                fires=fires,
                mean=sum(column) / n if n else math.nan,
                quartiles=tuple(_quantile(column, q) for q in (0.0, 0.25, 0.5, 0.75, 1.0)),
                histogram=tuple(torch.bincount(bins[:, c], minlength=HISTOGRAM_BINS).tolist()),
                falloff=tuple(column[r] for r in ranks),
                flag=flag,
            )
        )
    return stats


def _quantile(ascending: list[float], q: float) -> float:
    """Linear interpolation between the closest ranks (numpy's and torch's default)."""
    if not ascending:
        return math.nan
    position = q * (len(ascending) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ascending) - 1)
    return ascending[low] + (ascending[high] - ascending[low]) * (position - low)


def flag_text(stats: ClassStats, almost_all: float) -> str:
    """The flag as a sentence (empty without one)."""
    if stats.flag == FIRES_ON_ALMOST_ALL:
        return f"{stats.flag} (> {100 * almost_all:.0f}% of images): {BAD_CLASS_HINT}"
    return f"{stats.flag}: {BAD_CLASS_HINT}" if stats.flag else ""
