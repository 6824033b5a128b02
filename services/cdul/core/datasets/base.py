"""What every dataset offers: samples, ground truth without decoding, bad-item handling.

Where problems surface, by design:

* annotations are parsed when the dataset is built, so ``len()``, :meth:`Dataset.ids`,
  :meth:`Dataset.ground_truth` and :meth:`Dataset.ground_truth_matrix` always agree
  (an item whose annotation is malformed is dropped from all of them with
  ``skip_bad=True``, or the constructor raises);
* images are decoded only by :meth:`Dataset.load` and iteration, because decoding every
  image up front would cost as much as the job itself. An item whose image turns out
  bad is still listed by :meth:`Dataset.ids`; iterating with ``skip_bad=True`` leaves it
  out, so consumers should key results by :attr:`Sample.image_id`.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import NamedTuple

import torch
from PIL import Image

from cdul.core.errors import ConfigError, DatasetError
from cdul.core.images import DEFAULT_MAX_PIXELS, decode_image, read_image_file

__all__ = ["Dataset", "IndexedDataset", "Sample", "SkippedItem"]


# eq=False: comparing two samples field by field would compare tensors and images,
# which has no single truth value; samples compare by identity instead.
@dataclass(frozen=True, eq=False)
class Sample:
    """One decoded item of a dataset."""

    image_id: str
    image: Image.Image
    """Mode "RGB", EXIF orientation applied (see :mod:`cdul.core.images`)."""
    labels: torch.Tensor | None
    """float32 multi-hot of shape ``(len(dataset.classes),)``; None without ground truth."""
    path: str


class SkippedItem(NamedTuple):
    """An item left out with ``skip_bad=True``, and why."""

    image_id: str
    path: str
    reason: str


class Dataset(abc.ABC):
    """An ordered, indexable collection of images, optionally with multi-label ground truth.

    ``skip_bad=False`` (the default) makes a missing or corrupt image, or a malformed
    annotation, raise :class:`~cdul.core.errors.DatasetError` naming the file. With
    ``skip_bad=True`` such items are left out and recorded in :attr:`skipped`;
    :meth:`skip_report` renders them for printing at the end of a job. :meth:`load`
    always raises: it is a direct request for one item.
    """

    def __init__(self, *, skip_bad: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.skip_bad = skip_bad
        self.max_pixels = max_pixels
        # An insertion-ordered set, so iterating twice does not report an item twice.
        self._skipped: dict[SkippedItem, None] = {}

    # -- what a concrete dataset provides -------------------------------------------

    @property
    @abc.abstractmethod
    def classes(self) -> tuple[str, ...]:
        """Class names, in the order of the label vectors' entries."""

    @property
    @abc.abstractmethod
    def spec(self) -> str:
        """A spec string that :func:`cdul.core.datasets.open_dataset` reopens this with."""

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def ids(self) -> list[str]:
        """Image ids in dataset order (unique)."""

    @abc.abstractmethod
    def image_path(self, i: int) -> str:
        """Path of item ``i``'s image file."""

    @abc.abstractmethod
    def ground_truth(self, i: int) -> torch.Tensor | None:
        """Item ``i``'s float32 multi-hot labels, read from annotations only (no decoding)."""

    @property
    @abc.abstractmethod
    def has_ground_truth(self) -> bool:
        """Whether labels exist (False for unlabeled folders)."""

    # -- shared behaviour ------------------------------------------------------------

    def ground_truth_matrix(self) -> torch.Tensor | None:
        """All labels as a float32 ``(len(self), len(self.classes))`` tensor, or None."""
        if not self.has_ground_truth:
            return None
        rows = [self.ground_truth(i) for i in range(len(self))]
        if not rows:
            return torch.zeros((0, len(self.classes)), dtype=torch.float32)
        return torch.stack([row for row in rows if row is not None])  # all rows exist here

    def read_bytes(self, i: int) -> bytes:
        """Item ``i``'s encoded image as stored; DatasetError naming it if unreadable."""
        return read_image_file(self.image_path(i))

    def load(self, i: int) -> Sample:
        """Decode item ``i``; raises DatasetError (naming the file) if it cannot be read."""
        path = self.image_path(i)
        image = decode_image(self.read_bytes(i), name=path, max_pixels=self.max_pixels)
        return Sample(image_id=self.ids()[i], image=image, labels=self.ground_truth(i), path=path)

    def __iter__(self) -> Iterator[Sample]:
        ids = self.ids()
        for i in range(len(self)):
            try:
                yield self.load(i)
            except DatasetError as error:
                if not self.skip_bad:
                    raise
                self._skip(ids[i], self.image_path(i), str(error))

    @property
    def skipped(self) -> list[SkippedItem]:
        """Items left out so far (at construction, then while iterating)."""
        return list(self._skipped)

    def skip_report(self) -> str:
        """A human-readable list of the skipped items, for the end of a job's output."""
        if not self._skipped:
            return f"{self.spec}: no items skipped"
        lines = [f"{self.spec}: {len(self._skipped)} item(s) skipped"]
        lines += [f"  {item.image_id} ({item.path}): {item.reason}" for item in self.skipped]
        return "\n".join(lines)

    def _skip(self, image_id: str, path: str, reason: str) -> None:
        self._skipped.setdefault(SkippedItem(image_id, path, reason), None)

    def _fail_or_skip(self, image_id: str, path: str, error: DatasetError) -> None:
        """Raise ``error``, or record the item as skipped when ``skip_bad`` is set."""
        if not self.skip_bad:
            raise error
        self._skip(image_id, path, str(error))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.spec!r}: {len(self)} items>"


class IndexedDataset(Dataset):
    """A dataset held as an in-memory index: ids, image paths and a label matrix.

    The VOC, COCO and folder readers parse their annotations into this shape, then
    every query is a list or tensor lookup.
    """

    def __init__(
        self,
        *,
        classes: Sequence[str],
        ids: Sequence[str],
        paths: Sequence[str | os.PathLike[str]],
        labels: torch.Tensor | None,
        skip_bad: bool = False,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        super().__init__(skip_bad=skip_bad, max_pixels=max_pixels)
        self._set_index(classes, ids, paths, labels)

    def _set_index(
        self,
        classes: Sequence[str],
        ids: Sequence[str],
        paths: Sequence[str | os.PathLike[str]],
        labels: torch.Tensor | None,
    ) -> None:
        """Install the index; subclasses call this once their annotations are parsed."""
        if len(ids) != len(paths):
            raise ValueError(f"{len(ids)} ids but {len(paths)} paths")
        if len(set(ids)) != len(ids):
            raise ValueError("image ids must be unique")
        if labels is not None and tuple(labels.shape) != (len(ids), len(classes)):
            raise ValueError(f"labels shape {tuple(labels.shape)} != ({len(ids)}, {len(classes)})")
        self._classes = tuple(classes)
        self._ids = list(ids)
        self._paths = [os.fspath(p) for p in paths]
        # Stored as bool (a quarter of float32's memory for COCO-sized sets).
        self._labels = None if labels is None else labels.to(torch.bool)

    @property
    def classes(self) -> tuple[str, ...]:
        return self._classes

    def __len__(self) -> int:
        return len(self._ids)

    def ids(self) -> list[str]:
        return list(self._ids)

    def image_path(self, i: int) -> str:
        return self._paths[self._index(i)]

    @property
    def has_ground_truth(self) -> bool:
        return self._labels is not None

    def ground_truth(self, i: int) -> torch.Tensor | None:
        if self._labels is None:
            return None
        return self._labels[self._index(i)].to(torch.float32)

    def ground_truth_matrix(self) -> torch.Tensor | None:
        return None if self._labels is None else self._labels.to(torch.float32)

    def load(self, i: int) -> Sample:
        i = self._index(i)
        path = self._paths[i]
        image = decode_image(self.read_bytes(i), name=path, max_pixels=self.max_pixels)
        return Sample(image_id=self._ids[i], image=image, labels=self.ground_truth(i), path=path)

    def _index(self, i: int) -> int:
        """Normalise a (possibly negative) index, like a list does."""
        n = len(self._ids)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for a dataset of {n} items")
        return i % n


class UnlabeledDataset(IndexedDataset):
    """Images without annotations (a folder, an object-store prefix). ``classes`` may
    name the label set they will be pseudo-labeled with, so they carry it like any other
    dataset; :attr:`has_ground_truth` stays False."""

    def __init__(
        self,
        *,
        classes: Sequence[str] = (),
        skip_bad: bool = False,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        if isinstance(classes, str):  # a lone string would become one class per letter
            raise ConfigError(f"classes must be a sequence of names, got the string {classes!r}")
        super().__init__(
            classes=tuple(classes), ids=[], paths=[], labels=None, skip_bad=skip_bad,
            max_pixels=max_pixels,
        )  # fmt: skip

    def _set_images(self, ids: Sequence[str], paths: Sequence[str | os.PathLike[str]]) -> None:
        self._set_index(self.classes, ids, paths, None)


def safe_relative_path(value: str, *, what: str, source: str) -> PurePosixPath:
    """Check an image file name taken from an annotation file stays inside its folder.

    Annotation files are data, possibly from elsewhere; a name like ``../../etc/x`` or
    ``/abs/path`` must not make the reader open files outside the dataset.
    """
    relative = PurePosixPath(value.replace("\\", "/"))
    if not value or relative.is_absolute() or ".." in relative.parts:
        raise DatasetError(f"{source}: {what} {value!r} must be a relative path inside the dataset")
    return relative
