"""The trainer's inputs: pseudo labels matched to images by id, and the validation set.

Pixels go through :func:`cdul.core.transforms.eval_transform`, the transform the
TorchServe handler applies, so training, validation and serving see the same
preprocessing. (No augmentation: the paper trains on the pseudo labels as given.)
The run's reviewed labels (``RUN/reviews/``, written by ``cdul label-studio-backend``;
:mod:`cdul.labels.reviews`) replace their images' rows of the trained-on vector: a
reviewer's decision, 1.0 / 0.0. ``--hold-out K/N`` leaves fold K of N out (each image's
fold from a hash of its id, so every fold run agrees without a stored split).

Images are decoded on every pass; a DataLoader with ``--num-workers`` decodes them in
parallel, 0 keeps everything in one process.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, replace

import torch
from torch.utils.data import Dataset as TorchDataset

from cdul.core.datasets import Dataset, open_dataset
from cdul.core.errors import ConfigError
from cdul.core.pseudo_labels import PseudoLabels, read_pseudo_labels
from cdul.core.storage import open_store
from cdul.core.transforms import eval_transform
from cdul.labels.matching import check_classes, match_images
from cdul.labels.reading import run_thresholds
from cdul.labels.reviews import apply_decisions, read_reviews

log = logging.getLogger("cdul.trainer")


def fold_index(image_id: str, folds: int) -> int:
    """The fold (0 .. folds - 1) an image belongs to: a hash of its id, stable across
    runs, machines and Python processes (unlike ``hash``)."""
    digest = hashlib.sha256(image_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % folds


class ImageSet(TorchDataset):
    """Item ``k`` is ``(pixels of dataset item indices[k], k)``: ``k`` indexes the
    trainer's label rows."""

    def __init__(self, dataset: Dataset, indices: list[int], image_size: int) -> None:
        self.dataset = dataset
        self.indices = indices
        self.transform = eval_transform(image_size)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.dataset.load(self.indices[k]).image), k


@dataclass
class TrainData:
    classes: list[str]
    train: ImageSet
    initial_labels: torch.Tensor  # (N, C) the chosen pseudo-label vector, row k <-> train[k]
    ground_truth: torch.Tensor | None  # (N, C) or None
    val: ImageSet | None
    val_truth: torch.Tensor | None
    labels: PseudoLabels
    reviewed: torch.Tensor  # (N,) bool: row k's label is a reviewer's (kept as given)
    held_out: ImageSet | None = None  # --hold-out: the fold's images ...
    held_out_ids: list[str] | None = None  # ... and their ids

    def reviews_digest(self) -> str:
        """Which rows are reviewed and their labels ("" with none): a resumed run must
        learn from the reviews it started with."""
        rows = self.reviewed.nonzero().flatten().tolist()
        if not rows:
            return ""
        digest = hashlib.sha256()
        for k in rows:
            digest.update(self.labels.ids[k].encode() + b"\0")
            digest.update(self.initial_labels[k].numpy().tobytes())
        return digest.hexdigest()


def with_reviews(
    labels: PseudoLabels, store_uri: str, vector: str
) -> tuple[PseudoLabels, list[str]]:
    """``labels`` with the run's stored reviews in ``vector`` (labels/reviews.py), and the
    ids of the rows they replaced."""
    reviews = read_reviews(open_store(store_uri))
    if not reviews.decisions:
        return labels, []
    review = apply_decisions(
        labels, reviews.decisions, vector, run_thresholds(labels, vector),
        marked=True, source=f"{store_uri} reviews", strangers_ok=True,
    )  # fmt: skip
    skipped = len(reviews.decisions) - len(review.reviewed)
    log.info("%d reviewed image(s) from %s replace their %s pseudo labels (%d changed)%s",
             len(review.reviewed), store_uri, vector, len(review.changed),
             f"; {skipped} reviewed image(s) are not in the run" if skipped else "")  # fmt: skip
    return replace(labels, vectors={**labels.vectors, vector: review.vector}), review.reviewed


def _rows(labels: PseudoLabels, rows: list[int]) -> PseudoLabels:
    truth = labels.ground_truth
    return replace(
        labels, ids=[labels.ids[k] for k in rows],
        vectors={name: v[rows] for name, v in labels.vectors.items()},
        ground_truth=None if truth is None else truth[rows], cosines=None,
    )  # fmt: skip


def load_train_data(
    labels_uri: str, images: str, val: str | None, vector: str, image_size: int,
    hold_out: tuple[int, int] | None = None,
) -> TrainData:  # fmt: skip
    """Read the pseudo labels and the run's reviews, match them to ``images`` by image id,
    leave the ``hold_out`` fold ``(K, N)`` out, open ``val``."""
    labels = read_pseudo_labels(open_store(labels_uri))
    labels, reviewed_ids = with_reviews(labels, labels_uri, vector)
    reviewed_set = set(reviewed_ids)
    reviewed = torch.tensor([image_id in reviewed_set for image_id in labels.ids],
                            dtype=torch.bool)  # fmt: skip
    matched = match_images(labels, images, labels_uri)
    held_set, held_ids = None, None
    if hold_out is not None:
        k, n = hold_out
        folds = [fold_index(image_id, n) for image_id in labels.ids]
        keep = [r for r, f in enumerate(folds) if f != k]
        held = [r for r, f in enumerate(folds) if f == k]
        if not keep or not held:
            raise ConfigError(f"--hold-out {k}/{n} leaves {len(keep)} image(s) to train on and "
                              f"{len(held)} held out: too few images for {n} folds")  # fmt: skip
        held_ids = [labels.ids[r] for r in held]
        held_set = ImageSet(matched.dataset, [matched.indices[r] for r in held], image_size)
        matched = replace(matched, indices=[matched.indices[r] for r in keep])
        labels, reviewed = _rows(labels, keep), reviewed[keep]
        log.info("--hold-out %d/%d: training on %d image(s), %d held out", k, n, len(keep),
                 len(held))  # fmt: skip
    truth = labels.ground_truth
    matrix = matched.dataset.ground_truth_matrix() if matched.dataset.has_ground_truth else None
    if matrix is not None:
        truth = matrix[torch.tensor(matched.indices)]
    val_set, val_truth = None, None
    if val:
        val_dataset = open_dataset(val)
        if not val_dataset.has_ground_truth:
            raise ConfigError(f"validation set {val} has no ground truth")
        check_classes(labels.classes, val_dataset.classes, val)
        val_set = ImageSet(val_dataset, list(range(len(val_dataset))), image_size)
        val_truth = val_dataset.ground_truth_matrix()
    return TrainData(
        classes=list(labels.classes),
        train=ImageSet(matched.dataset, matched.indices, image_size),
        initial_labels=labels[vector].float().clone(),
        ground_truth=truth,
        val=val_set,
        val_truth=val_truth,
        labels=labels,
        reviewed=reviewed,
        held_out=held_set,
        held_out_ids=held_ids,
    )
