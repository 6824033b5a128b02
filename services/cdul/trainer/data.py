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
    dataset = open_dataset(images)
    position = {image_id: i for i, image_id in enumerate(dataset.ids())}
    missing = [image_id for image_id in labels.ids if image_id not in position]
    if missing:
        raise ConfigError(
            f"{len(missing)} pseudo-labelled images are not in {images} "
            f"(e.g. {missing[0]!r}): are the labels for this dataset?"
        )
    if not labels.ids:
        raise ConfigError(f"the pseudo labels at {labels_uri} hold no image")
    indices = [position[image_id] for image_id in labels.ids]
    truth = labels.ground_truth
    if dataset.has_ground_truth:
        _check_classes(labels.classes, dataset.classes, images)
        matrix = dataset.ground_truth_matrix()
        truth = matrix[torch.tensor(indices)] if matrix is not None else truth
    val_set, val_truth = None, None
    if val:
        val_dataset = open_dataset(val)
        if not val_dataset.has_ground_truth:
            raise ConfigError(f"validation set {val} has no ground truth")
        _check_classes(labels.classes, val_dataset.classes, val)
        val_set = ImageSet(val_dataset, list(range(len(val_dataset))), image_size)
        val_truth = val_dataset.ground_truth_matrix()
    return TrainData(
        classes=list(labels.classes),
        train=ImageSet(dataset, indices, image_size),
        initial_labels=labels[vector].float().clone(),
        ground_truth=truth,
        val=val_set,
        val_truth=val_truth,
        labels=labels,
    )


def _check_classes(label_classes: list[str], dataset_classes, spec: str) -> None:
    if list(label_classes) != list(dataset_classes):
        raise ConfigError(
            f"the pseudo labels' classes {list(label_classes)} differ from {spec}'s "
            f"{list(dataset_classes)}"
        )
