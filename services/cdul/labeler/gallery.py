"""``cdul label-gallery RUN -o DIR``: a run's pseudo labels as a static HTML gallery.

What it writes (plain files, relative links, no script, no server; opens offline)::

    DIR/index.html          the run's settings, one row per class, notes
    DIR/class-KKK.html      one page per class: highest-scored images and, with
                            ground truth, the worst false positives and negatives
    DIR/thumbs/RRRRRRR.jpg  one thumbnail per image shown (R: the image's row in the run)

Thumbnails are made here from the dataset's images (``open_dataset`` on the run's
dataset spec, or ``--images``), so a run on ``s3://`` looks the same as a local one and
the directory can be copied anywhere. Only the images on some page get one, each once,
and a page shows at most ``--per-class`` + 2 x ``--errors`` of them, so the pages stay
small however large the run. An image that cannot be read gets a placeholder and a note.

:func:`class_stats` holds the per-class numbers (images at or over the threshold,
score distribution, the never-fires / fires-on-almost-everything flags); ``cdul
label-report`` prints the same numbers for a run without ground truth.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from cdul.core.datasets import Dataset, open_dataset
from cdul.core.errors import CdulError, ConfigError
from cdul.core.evaluation import Evaluation, evaluate, format_ap
from cdul.core.pseudo_labels import LabelReading, PseudoLabels, over_threshold, read_pseudo_labels
from cdul.core.settings import add_flags, flag_name, from_args, setting
from cdul.core.storage import open_store

NEVER_FIRES = "never fires"
FIRES_ON_ALMOST_ALL = "fires on almost everything"
BAD_CLASS_HINT = "a sign of a bad class name or template"
HISTOGRAM_BINS = 10
FALLOFF_POINTS = 101
TOP_LABELS = 3
THUMB_DIR = "thumbs"
THUMB_WORKERS = 8  # reading from S3 is mostly waiting; a few threads hide it


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


@dataclass(frozen=True, kw_only=True)
class GalleryConfig(StatsConfig):
    """``cdul label-gallery``: which run, where to, and how much of it to show."""

    run: str
    output: Path
    per_class: int = setting(24, "highest-scored images shown per class")
    errors: int = setting(8, "worst false positives and negatives per class (ground truth)")
    thumb_size: int = setting(160, "longest side of a thumbnail, in pixels")
    images: str | None = setting(
        None, "dataset spec to read the images from (default: the run's own dataset)", type=str
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, low, high in (("per_class", 1, 1000), ("errors", 0, 1000),
                                ("thumb_size", 16, 1024)):  # fmt: skip
            value = getattr(self, name)
            if not low <= value <= high:
                raise ConfigError(
                    f"{flag_name(GalleryConfig, name)} must be in {low}..{high}, got {value}"
                )


@dataclass(frozen=True)
class ClassStats:
    """One class's scores over a run's images."""

    name: str
    images: int
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
    scores: torch.Tensor, classes: Sequence[str], config: StatsConfig
) -> list[ClassStats]:
    """The numbers of each class (column of ``scores``, ``(N, C)`` in [0, 1])."""
    scores = scores.float()
    n = scores.shape[0]
    ascending = torch.sort(scores, dim=0).values
    bins = (scores * HISTOGRAM_BINS).long().clamp(0, HISTOGRAM_BINS - 1)
    stats = []
    # 0-based positions in the ascending column of ranks 1..n, evenly spaced in log(rank)
    ranks = [n - round(n ** (k / (FALLOFF_POINTS - 1))) for k in range(FALLOFF_POINTS)] if n else []
    chosen = over_threshold(scores, config.threshold)
    for c, name in enumerate(classes):
        column = ascending[:, c].tolist()
        fires = int(chosen[:, c].sum())
        flag = None
        if n and fires == 0:
            flag = NEVER_FIRES
        elif n and fires / n > config.almost_all:
            flag = FIRES_ON_ALMOST_ALL
        stats.append(
            ClassStats(
                name=name,
                images=n,
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


def flag_text(stats: ClassStats, config: StatsConfig) -> str:
    """The flag as a sentence (empty without one)."""
    if stats.flag == FIRES_ON_ALMOST_ALL:
        return f"{stats.flag} (> {100 * config.almost_all:.0f}% of images): {BAD_CLASS_HINT}"
    return f"{stats.flag}: {BAD_CLASS_HINT}" if stats.flag else ""


@dataclass(frozen=True)
class ImageLabel:
    name: str
    score: float
    truth: bool | None


@dataclass(frozen=True)
class Thumb:
    """One image on some page: its thumbnail (None when unreadable) and top labels."""

    row: int
    image_id: str
    file: str | None
    size: tuple[int, int]
    problem: str | None
    top: tuple[ImageLabel, ...]


@dataclass(frozen=True)
class ClassView:
    stats: ClassStats
    ap: float | None
    """The class's AP (NaN: no positive image); None without ground truth."""
    positives: int | None
    top: list[int]
    false_positives: list[int]
    """Highest-scored rows without the class (with ground truth)."""
    false_negatives: list[int]
    """Lowest-scored rows with the class (with ground truth)."""


@dataclass
class Gallery:
    uri: str
    config: GalleryConfig
    labels: PseudoLabels
    scores: torch.Tensor
    classes: list[ClassView]
    evaluation: Evaluation | None
    thumbs: dict[int, Thumb]
    dataset_problem: str | None

    def settings(self) -> list[tuple[str, str]]:
        """The run's settings for the summary, as (label, text) pairs."""
        m, cfg = self.labels.manifest, self.config
        rows = [
            ("run", self.uri),
            ("dataset", m.dataset + (f" (images read from {cfg.images})" if cfg.images else "")),
            ("images", f"{len(self.labels)} labeled, {len(m.skipped)} skipped by the labeler"),
            ("classes", str(len(self.labels.classes))),
            ("CLIP model", f"{m.clip_model} ({Path(m.clip_pretrained).name or 'default'})"),
            ("template", ", ".join(m.templates) if m.templates else m.template),
            ("snippets", m.snippet_spec),
            ("recipe", str(m.label_recipe())),
            ("shown", f"{cfg.vector} pseudo labels; a class fires at >= {cfg.threshold:g}"),
            ("created", f"{m.created} (code {m.code_version})"),
        ]
        if self.evaluation is not None:
            stored = m.evaluation or {}
            means = [f"{name} {format_ap(_nan(stored[name]['mAP']))}"
                     for name in ("global", "aggregate", "final") if name in stored]  # fmt: skip
            rows.append(("mAP", f"{format_ap(self.evaluation.mean_ap)} ({cfg.vector})"
                         + (f"; stored: {', '.join(means)}" if means else "")))  # fmt: skip
        return rows


def _nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


def build_gallery(config: GalleryConfig) -> Gallery:
    """Read the run, pick the images of each class, make their thumbnails."""
    store = open_store(config.run)
    labels = read_pseudo_labels(store)
    scores, truth = labels[config.vector].float(), labels.ground_truth
    evaluation = None
    if truth is not None and len(labels):
        evaluation = evaluate(scores, truth, labels.classes)
    views = []
    for c, stats in enumerate(class_stats(scores, labels.classes, config)):
        order = torch.argsort(scores[:, c], descending=True, stable=True)
        fp, fn = [], []
        if truth is not None and config.errors:
            with_class = truth[order, c] > 0
            fp = order[~with_class][: config.errors].tolist()
            fn = order[with_class].flip(0)[: config.errors].tolist()
        views.append(
            ClassView(
                stats=stats,
                ap=None if evaluation is None else evaluation.per_class[stats.name],
                positives=None if evaluation is None else evaluation.positives[stats.name],
                top=order[: config.per_class].tolist(),
                false_positives=fp,
                false_negatives=fn,
            )
        )
    rows = sorted({r for v in views for r in (*v.top, *v.false_positives, *v.false_negatives)})
    spec = config.images or labels.manifest.dataset
    dataset, problem = None, None
    try:
        dataset = open_dataset(spec)
    except CdulError as error:  # moved or unreachable: placeholders instead of a crash
        problem = f"the images could not be opened ({error}); give --images SPEC"
    thumbs = make_thumbnails(labels, scores, rows, dataset, config)
    return Gallery(config.run, config, labels, scores, views, evaluation, thumbs, problem)


def top_labels(labels: PseudoLabels, scores: torch.Tensor, row: int) -> tuple[ImageLabel, ...]:
    values, indices = torch.topk(scores[row], min(TOP_LABELS, scores.shape[1]))
    truth = labels.ground_truth
    return tuple(
        ImageLabel(labels.classes[c], float(v), None if truth is None else bool(truth[row, c] > 0))
        for v, c in zip(values.tolist(), indices.tolist(), strict=True)
    )


def make_thumbnails(
    labels: PseudoLabels,
    scores: torch.Tensor,
    rows: list[int],
    dataset: Dataset | None,
    config: GalleryConfig,
) -> dict[int, Thumb]:
    """One thumbnail per row in ``rows`` under ``output/thumbs``; a Thumb without a file
    (and the reason) for an image that is not in the dataset or cannot be read."""
    folder = config.output / THUMB_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("[0-9]" * 7 + ".jpg"):  # an earlier gallery's; only ours
        stale.unlink()
    position = {} if dataset is None else {i: k for k, i in enumerate(dataset.ids())}

    def make(row: int) -> Thumb:
        image_id = labels.ids[row]
        file, size, problem = None, (config.thumb_size, config.thumb_size), None
        try:
            if dataset is None:
                raise ConfigError("the dataset could not be opened")
            if image_id not in position:
                raise ConfigError(f"{image_id!r} is not in {dataset.spec}")
            image = dataset.load(position[image_id]).image
            image.thumbnail((config.thumb_size, config.thumb_size))
            file = f"{THUMB_DIR}/{row:07d}.jpg"
            image.save(config.output / file, "JPEG", quality=82)
            size = image.size
        except (CdulError, OSError, ValueError) as error:
            file, problem = None, str(error) or type(error).__name__
        return Thumb(row, image_id, file, size, problem, top_labels(labels, scores, row))

    with ThreadPoolExecutor(THUMB_WORKERS) as pool:
        return {thumb.row: thumb for thumb in pool.map(make, rows)}


def write_gallery(config: GalleryConfig) -> tuple[Gallery, list[Path]]:
    """Build the gallery and write its pages; return it and the pages written."""
    from cdul.labeler.gallery_html import render_pages

    config.output.mkdir(parents=True, exist_ok=True)
    gallery = build_gallery(config)
    written = []
    for name, text in render_pages(gallery).items():
        path = config.output / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return gallery, written


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="a labeled run URI (s3://... or file://...)")
    parser.add_argument("-o", "--output", required=True, help="directory to write the pages to")
    add_flags(parser, GalleryConfig)


def run(args: argparse.Namespace) -> int:
    config = from_args(GalleryConfig, args, run=args.run, output=Path(args.output))
    gallery, pages = write_gallery(config)
    made = [t for t in gallery.thumbs.values() if t.file]
    size = sum(p.stat().st_size for p in pages)
    print(
        f"{pages[0]}: {len(gallery.classes)} classes, {len(pages)} pages ({size / 1024:.0f} KiB), "
        f"{len(made)} thumbnails of {len(gallery.labels)} images"
    )
    unreadable = len(gallery.thumbs) - len(made)
    if gallery.dataset_problem:
        print(f"note: {gallery.dataset_problem}")
    elif unreadable:
        print(f"note: {unreadable} image(s) could not be read; they show a placeholder")
    return 0
