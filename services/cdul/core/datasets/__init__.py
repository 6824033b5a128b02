"""Datasets: VOC, COCO and plain folders behind one interface, opened from a spec string.

>>> dataset = open_dataset("voc:/data/VOC2012:val", skip_bad=True)  # doctest: +SKIP
>>> for sample in dataset:  # doctest: +SKIP
...     sample.image_id, sample.image, sample.labels

Spec forms (see :data:`SPEC_FORMS`)::

    voc:ROOT[:SPLIT]                  VOC layout; SPLIT defaults to "val"
    coco:ANNOTATIONS_JSON:IMAGES_DIR  COCO instances file + its image directory
    folder:PATH                       unlabeled images under PATH, recursively
    s3://BUCKET/PREFIX                unlabeled image objects under an object-store prefix

The parts are separated by ':', so a VOC ROOT or a COCO path must not contain ':'
(absolute Linux paths are fine). A folder PATH is everything after ``folder:`` and
may contain ':'. ``~`` is expanded. Keyword options go to the dataset's constructor:
``skip_bad`` and ``max_pixels`` for all kinds, ``difficult`` for VOC, ``classes`` for
folders and s3 prefixes.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cdul.core.datasets.base import Dataset, IndexedDataset, Sample, SkippedItem
from cdul.core.datasets.coco import CocoDataset
from cdul.core.datasets.folder import FolderDataset
from cdul.core.datasets.s3 import S3Dataset
from cdul.core.datasets.voc import DIFFICULT_MODES, VOC_CLASSES, VocDataset
from cdul.core.errors import ConfigError

__all__ = [
    "DATASET_KINDS",
    "DIFFICULT_MODES",
    "SPEC_FORMS",
    "VOC_CLASSES",
    "CocoDataset",
    "Dataset",
    "DatasetKind",
    "FolderDataset",
    "IndexedDataset",
    "S3Dataset",
    "Sample",
    "SkippedItem",
    "VocDataset",
    "open_dataset",
]


@dataclass(frozen=True)
class DatasetKind:
    """One ``kind:`` of spec: its documented form, how to split it, what it builds."""

    form: str
    parse: Callable[[str, str], list[Any]]
    """(text after ``kind:``, whole spec) -> positional arguments of ``factory``."""
    factory: Callable[..., Dataset]


def _spec_error(spec: str, problem: str) -> ConfigError:
    forms = "; ".join(SPEC_FORMS)
    return ConfigError(
        f"bad dataset spec {spec!r}: {problem}. Accepted forms: {forms} "
        "(a VOC ROOT or COCO path must not contain ':')"
    )


def _existing(text: str, spec: str, what: str, *, directory: bool) -> Path:
    if not text:
        raise _spec_error(spec, f"{what} is empty")
    path = Path(text).expanduser()
    ok = path.is_dir() if directory else path.is_file()
    if not ok:
        kind = "directory" if directory else "file"
        raise _spec_error(spec, f"{what} {text!r} is not an existing {kind}")
    return path


def _parse_voc(rest: str, spec: str) -> list[Any]:
    parts = rest.split(":")
    if len(parts) > 2:
        raise _spec_error(spec, "a VOC spec has at most ROOT and SPLIT")
    root = _existing(parts[0], spec, "VOC ROOT", directory=True)
    split = parts[1] if len(parts) == 2 else "val"
    if not split:
        raise _spec_error(spec, "SPLIT is empty")
    return [root, split]


def _parse_coco(rest: str, spec: str) -> list[Any]:
    parts = rest.split(":")
    if len(parts) != 2:
        raise _spec_error(spec, "a COCO spec needs ANNOTATIONS_JSON and IMAGES_DIR")
    annotations = _existing(parts[0], spec, "ANNOTATIONS_JSON", directory=False)
    images = _existing(parts[1], spec, "IMAGES_DIR", directory=True)
    return [annotations, images]


def _parse_folder(rest: str, spec: str) -> list[Any]:
    return [_existing(rest, spec, "PATH", directory=True)]


def _parse_s3(rest: str, spec: str) -> list[Any]:
    if not rest.startswith("//") or not rest[2:].split("/")[0]:
        raise _spec_error(spec, "an s3 spec is s3://BUCKET/PREFIX")
    return [spec.strip()]


#: The registry: spec kind -> how to parse and build it. Adding a kind is one entry.
DATASET_KINDS: dict[str, DatasetKind] = {
    "voc": DatasetKind("voc:ROOT[:SPLIT] (SPLIT defaults to val)", _parse_voc, VocDataset),
    "coco": DatasetKind("coco:ANNOTATIONS_JSON:IMAGES_DIR", _parse_coco, CocoDataset),
    "folder": DatasetKind("folder:PATH", _parse_folder, FolderDataset),
    "s3": DatasetKind("s3://BUCKET/PREFIX", _parse_s3, S3Dataset),
}

SPEC_FORMS: tuple[str, ...] = tuple(kind.form for kind in DATASET_KINDS.values())


def open_dataset(spec: str, **options: Any) -> Dataset:
    """Open the dataset ``spec`` names; ``options`` go to its constructor.

    Raises :class:`~cdul.core.errors.ConfigError` for a malformed spec, a path that
    does not exist or an option the kind does not take, and
    :class:`~cdul.core.errors.DatasetError` for broken dataset contents.
    """
    name, colon, rest = spec.strip().partition(":")
    if not colon:
        raise _spec_error(spec, "expected KIND:...")
    kind = DATASET_KINDS.get(name)
    if kind is None:
        raise _spec_error(spec, f"unknown kind {name!r} (known: {', '.join(DATASET_KINDS)})")
    args = kind.parse(rest, spec)
    accepted = [
        parameter.name
        for parameter in inspect.signature(kind.factory).parameters.values()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(
            f"option(s) {', '.join(unknown)} do not apply to {name} datasets "
            f"(accepted: {', '.join(accepted)})"
        )
    return kind.factory(*args, **options)
