"""A run's rows matched to a dataset's images by image id: the one matching the
trainer (what it learns from), the export (each row's image path) and the gallery
(each row's thumbnail) share."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cdul.core.datasets import Dataset, open_dataset
from cdul.core.errors import ConfigError
from cdul.core.pseudo_labels import PseudoLabels


def images_spec(labels: PseudoLabels, override: str | None = None) -> str:
    """Where a run's images are: ``override`` (``--images``, when they moved since
    labeling), else the dataset the run's manifest names."""
    return override or labels.manifest.dataset


def positions(dataset: Dataset, ids: Sequence[str]) -> list[int | None]:
    """Each id's item index in ``dataset`` (None: not there)."""
    index = {image_id: i for i, image_id in enumerate(dataset.ids())}
    return [index.get(image_id) for image_id in ids]


@dataclass(frozen=True)
class MatchedImages:
    """A run's rows and their images: row ``k`` is item ``indices[k]`` of ``dataset``."""

    dataset: Dataset
    indices: list[int]

    def paths(self) -> list[str]:
        return [self.dataset.image_path(i) for i in self.indices]


def match_images(labels: PseudoLabels, spec: str, run: str) -> MatchedImages:
    """Every row of ``labels`` (the run at ``run``) matched to its image in the dataset
    ``spec``; ConfigError when an image is not there, the run holds none, or the
    dataset's classes (where it has ground truth) are not the run's."""
    dataset = open_dataset(spec)
    found = positions(dataset, labels.ids)
    missing = [image_id for image_id, i in zip(labels.ids, found, strict=True) if i is None]
    if missing:
        raise ConfigError(
            f"{len(missing)} pseudo-labelled images are not in {spec} "
            f"(e.g. {missing[0]!r}): are the labels for this dataset?"
        )
    if not labels.ids:
        raise ConfigError(f"the pseudo labels at {run} hold no image")
    if dataset.has_ground_truth:
        check_classes(labels.classes, dataset.classes, spec)
    return MatchedImages(dataset, [i for i in found if i is not None])


def check_classes(label_classes: Sequence[str], dataset_classes: Sequence[str], spec: str) -> None:
    """The run's classes must be the dataset's, in the same order."""
    if list(label_classes) != list(dataset_classes):
        raise ConfigError(
            f"the pseudo labels' classes {list(label_classes)} differ from {spec}'s "
            f"{list(dataset_classes)}"
        )
