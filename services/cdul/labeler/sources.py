"""What the labeler labels: image ids, raw bytes, classes and (maybe) ground truth.

The labeler sends each image's file bytes as they are: the CLIP service decodes them
once (EXIF rotation, RGB) and cuts snippets from the full-resolution image, so the job
never decodes or re-encodes. A file that cannot be read, or that the service cannot
decode, is reported by the job with :meth:`ImageSource.location` (the file's path or
URI).

Sources are dataset specs (``voc:``, ``coco:``, ``folder:``, ``s3://``; see
:mod:`cdul.core.datasets`); the unlabeled kinds (folders, s3 prefixes) take their
classes from ``--classes``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from cdul.core.datasets import Dataset, open_dataset
from cdul.core.errors import ConfigError

#: Dataset kinds without labels of their own: they take the classes given to the labeler.
UNLABELED_KINDS = ("folder:", "s3://")


@dataclass
class ImageSource:
    """An ordered list of images to label (after ``limit``)."""

    spec: str
    classes: tuple[str, ...]
    ids: list[str]
    locations: list[str]
    ground_truth: torch.Tensor | None
    dataset: Dataset
    skipped: list[dict[str, str]] = field(default_factory=list)
    """Items the dataset itself left out (malformed annotations) with ``skip_bad``."""

    def __len__(self) -> int:
        return len(self.ids)

    def location(self, i: int) -> str:
        return self.locations[i]

    def read(self, i: int) -> bytes:
        """The raw bytes of image ``i``; DatasetError naming the file if unreadable."""
        return self.dataset.read_bytes(i)


def open_source(
    spec: str,
    *,
    classes: tuple[str, ...] | None = None,
    skip_bad: bool = False,
    limit: int | None = None,
) -> ImageSource:
    """Open ``spec``; ``classes`` override the dataset's only where it has no ground truth."""
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {limit}")
    source = _dataset_source(spec, classes, skip_bad)
    if limit is not None:
        source.ids = source.ids[:limit]
        source.locations = source.locations[:limit]
        if source.ground_truth is not None:
            source.ground_truth = source.ground_truth[:limit]
    if not source.ids:
        raise ConfigError(f"{spec}: no images to label")
    return source


def _dataset_source(spec: str, classes: tuple[str, ...] | None, skip_bad: bool) -> ImageSource:
    options: dict[str, object] = {"skip_bad": skip_bad}
    if classes is not None and spec.startswith(UNLABELED_KINDS):
        options["classes"] = classes
    dataset = open_dataset(spec, **options)
    if classes is not None and tuple(classes) != tuple(dataset.classes):
        raise ConfigError(
            f"{spec} has ground truth for its own classes {list(dataset.classes)}; "
            "--classes may only name the classes of an unlabeled dataset"
        )
    if not dataset.classes:
        raise ConfigError(f"{spec} names no classes: give --classes FILE (one class per line)")
    return ImageSource(
        spec=dataset.spec,
        classes=tuple(dataset.classes),
        ids=dataset.ids(),
        locations=[dataset.image_path(i) for i in range(len(dataset))],
        ground_truth=dataset.ground_truth_matrix(),
        dataset=dataset,
        skipped=[
            {"image_id": s.image_id, "path": s.path, "reason": s.reason} for s in dataset.skipped
        ],
    )
