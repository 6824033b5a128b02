"""The trainer's inputs: pseudo labels matched to images by id, and the validation set.

Pixels go through :func:`cdul.core.transforms.eval_transform`, the transform the
TorchServe handler applies, so training, validation and serving see the same
preprocessing. (No augmentation: the paper trains on the pseudo labels as given.)
Images are decoded on every pass; a DataLoader with ``--num-workers`` decodes them in
parallel, 0 keeps everything in one process.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import Dataset as TorchDataset

from cdul.core.datasets import Dataset, open_dataset
from cdul.core.errors import ConfigError
from cdul.core.pseudo_labels import PseudoLabels, read_pseudo_labels
from cdul.core.storage import open_store
from cdul.core.transforms import eval_transform
from cdul.labels.matching import check_classes, match_images


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


def load_train_data(
    labels_uri: str, images: str, val: str | None, vector: str, image_size: int
) -> TrainData:
    """Read the pseudo labels, match them to ``images`` by image id, open ``val``."""
    labels = read_pseudo_labels(open_store(labels_uri))
    matched = match_images(labels, images, labels_uri)
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
    )
