"""The gallery of ``cdul label-gallery``: what its pages show, built from a run.

What the command writes (plain files, relative links, no script, no server; opens offline)::

    DIR/index.html          the run's settings, one row per class, notes
    DIR/class-KKK.html      one page per class: highest-scored images and, with
                            ground truth, the worst false positives and negatives
    DIR/review.html         review first: the --review labels most likely wrong
                            (cdul label-queue's order)
    DIR/thumbs/RRRRRRR.jpg  one thumbnail per image shown (R: the image's row in the run)

Thumbnails are made here from the dataset's images (``open_dataset`` on the run's
dataset spec, or ``--images``), so a run on ``s3://`` looks the same as a local one and
the directory can be copied anywhere. Only the images on some page get one, each once,
and a page shows at most ``--per-class`` + 2 x ``--errors`` of them, so the pages stay
small however large the run. An image that cannot be read gets a placeholder and a note.

The per-class numbers are :func:`cdul.labels.stats.class_stats` (``cdul label-report``
prints the same ones); :mod:`.html` renders a built :class:`Gallery`, :mod:`.command` is
the command.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from cdul.core.datasets import Dataset, open_dataset
from cdul.core.errors import CdulError, ConfigError
from cdul.core.evaluation import Evaluation, LabelF1, evaluate, format_ap, label_f1
from cdul.core.method import review
from cdul.core.pseudo_labels import LABEL_VECTORS, PseudoLabels, read_pseudo_labels
from cdul.core.settings import flag_name, setting
from cdul.core.storage import open_store
from cdul.labels.matching import images_spec, positions
from cdul.labels.queue import priorities
from cdul.labels.reading import Thresholds, over_threshold
from cdul.labels.stats import ClassStats, StatsConfig, class_stats

TOP_LABELS = 3
THUMB_DIR = "thumbs"
THUMB_WORKERS = 8  # reading from S3 is mostly waiting; a few threads hide it


@dataclass(frozen=True, kw_only=True)
class GalleryConfig(StatsConfig):
    """``cdul label-gallery``: which run, where to, and how much of it to show."""

    run: str
    output: Path
    per_class: int = setting(24, "highest-scored images shown per class")
    errors: int = setting(8, "worst false positives and negatives per class (ground truth)")
    thumb_size: int = setting(160, "longest side of a thumbnail, in pixels")
    review: int = setting(48, "labels on the review-first page (the review queue's first N)")
    images: str | None = setting(
        None, "dataset spec to read the images from (default: the run's own dataset)", type=str
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, low, high in (("per_class", 1, 1000), ("errors", 0, 1000),
                                ("thumb_size", 16, 1024), ("review", 0, 1000)):  # fmt: skip
            value = getattr(self, name)
            if not low <= value <= high:
                raise ConfigError(
                    f"{flag_name(GalleryConfig, name)} must be in {low}..{high}, got {value}"
                )


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


@dataclass(frozen=True)
class ReviewPair:
    """One label on the review-first page: image row, class, the label, its review score."""

    row: int
    c: int
    label: bool
    review_score: float


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
    thresholds: Thresholds
    f1: LabelF1 | None
    """The shown labels against the ground truth (None without)."""
    review: list[ReviewPair]
    review_source: str

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
            (
                "shown",
                f"{cfg.vector} pseudo labels; a class fires at >= its threshold "
                f"({self.thresholds.source})",
            ),
            ("created", f"{m.created} (code {m.code_version})"),
        ]
        if m.provenance() is not None:
            rows.insert(1, ("labels from", m.provenance()))
        if self.evaluation is not None:
            stored = m.evaluation or {}
            means = [f"{name} {format_ap(_nan(stored[name]['mAP']))}"
                     for name in LABEL_VECTORS if name in stored]  # fmt: skip
            rows.append(("mAP", f"{format_ap(self.evaluation.mean_ap)} ({cfg.vector})"
                         + (f"; stored: {', '.join(means)}" if means else "")))  # fmt: skip
        if self.f1 is not None:
            f1 = self.f1
            rows.append(("labels", f"macro-F1 {format_ap(f1.macro_f1)}, micro-F1 "
                         f"{format_ap(f1.micro_f1)}, {f1.labels_per_image:.2f} labels per image "
                         f"(truth {f1.truth_per_image:.2f})"))  # fmt: skip
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
    thresholds = config.thresholds_for(labels)
    stats_per_class = class_stats(scores, labels.classes, thresholds.values, config.almost_all)
    for c, stats in enumerate(stats_per_class):
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
    found = priorities(labels, store, config)
    review_scores = review.review_score(found.values)
    queue = []
    for i, c in review.review_order(found.values).tolist():
        if len(queue) >= config.review:
            break
        if labels.ids[i] not in found.reviewed:
            queue.append(ReviewPair(i, c, bool(found.labels[i, c]), float(review_scores[i, c])))
    rows = sorted({r for v in views for r in (*v.top, *v.false_positives, *v.false_negatives)}
                  | {pair.row for pair in queue})  # fmt: skip
    spec = images_spec(labels, config.images)
    dataset, problem = None, None
    try:
        dataset = open_dataset(spec)
    except CdulError as error:  # moved or unreachable: placeholders instead of a crash
        problem = f"the images could not be opened ({error}); give --images SPEC"
    thumbs = make_thumbnails(labels, scores, rows, dataset, config)
    f1 = None
    if truth is not None and len(labels):
        chosen = torch.from_numpy(over_threshold(scores, thresholds.values))
        f1 = label_f1(chosen, truth, labels.classes)
    return Gallery(config.run, config, labels, scores, views, evaluation, thumbs, problem,
                   thresholds, f1, queue, found.source)  # fmt: skip


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
    position: dict[int, int | None] = {}
    if dataset is not None:
        found = positions(dataset, [labels.ids[row] for row in rows])
        position = dict(zip(rows, found, strict=True))

    def make(row: int) -> Thumb:
        image_id = labels.ids[row]
        file, size, problem = None, (config.thumb_size, config.thumb_size), None
        try:
            if dataset is None:
                raise ConfigError("the dataset could not be opened")
            index = position[row]
            if index is None:
                raise ConfigError(f"{image_id!r} is not in {dataset.spec}")
            image = dataset.load(index).image
            image.thumbnail((config.thumb_size, config.thumb_size))
            file = f"{THUMB_DIR}/{row:07d}.jpg"
            image.save(config.output / file, "JPEG", quality=82)
            size = image.size
        except (CdulError, OSError, ValueError) as error:
            file, problem = None, str(error) or type(error).__name__
        return Thumb(row, image_id, file, size, problem, top_labels(labels, scores, row))

    with ThreadPoolExecutor(THUMB_WORKERS) as pool:
        return {thumb.row: thumb for thumb in pool.map(make, rows)}
