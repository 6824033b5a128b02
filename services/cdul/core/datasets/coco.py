"""COCO ``instances_*.json`` reader: image-level multi-hot labels from box annotations.

* Classes are the category names ordered by category id (80 for real COCO, whose ids
  run 1..90 with gaps; label column k is the k-th smallest id, not id - 1).
* An image is positive for every category it has an annotation of, crowd annotations
  (``iscrowd: 1``) included: a crowd of people still shows people.
* An image without annotations has all-zero labels (COCO has about 1% of those).
* A file without an ``annotations`` key (COCO's ``image_info_test*.json``) gives a
  dataset without ground truth.
* Image ids are the JSON ids as strings (``"397133"``), in the file's order.

Structural problems (not JSON, missing ``images``/``categories``, a broken category)
always raise. Problems that concern one image (its record, or an annotation of it
naming an unknown category) raise too, or with ``skip_bad=True`` drop that image.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from cdul.core.datasets.base import IndexedDataset, safe_relative_path
from cdul.core.errors import ConfigError, DatasetError
from cdul.core.images import DEFAULT_MAX_PIXELS

__all__ = ["CocoDataset"]


class CocoDataset(IndexedDataset):
    """The images of a COCO instances file, read from ``images_dir/<file_name>``."""

    def __init__(
        self,
        annotations: str | os.PathLike[str],
        images_dir: str | os.PathLike[str],
        *,
        skip_bad: bool = False,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        super().__init__(
            classes=(), ids=[], paths=[], labels=None, skip_bad=skip_bad, max_pixels=max_pixels
        )
        self.annotations_path = Path(annotations)
        self.images_dir = Path(images_dir)
        if not self.annotations_path.is_file():
            raise ConfigError(f"COCO annotation file {str(self.annotations_path)!r} does not exist")
        if not self.images_dir.is_dir():
            raise ConfigError(f"COCO images directory {str(self.images_dir)!r} is not a directory")

        source = str(self.annotations_path)
        document = _load_json(self.annotations_path)
        category_ids, classes = _parse_categories(document, source)
        column = {category_id: k for k, category_id in enumerate(category_ids)}

        # image json id -> (image id string, path); insertion order = file order.
        images: dict[Any, tuple[str, Path]] = {}
        dropped: set[Any] = set()  # ids of images skipped, whose annotations are ignored
        taken: set[str] = set()
        for k, record in enumerate(_require_list(document, "images", source)):
            try:
                json_id, file_name = _parse_image(record, k, source)
                if str(json_id) in taken:  # 7 and "7" would collide as image ids
                    raise DatasetError(f"{source}: images[{k}] repeats image id {json_id!r}")
            except DatasetError as error:
                json_id = record.get("id") if isinstance(record, dict) else None
                self._fail_or_skip(_id_text(json_id, k), source, error)
                if _is_id(json_id) and json_id not in images:
                    dropped.add(json_id)
                continue
            taken.add(str(json_id))
            images[json_id] = (str(json_id), self.images_dir / file_name)

        positives: dict[Any, set[int]] | None = None
        if "annotations" in document:
            positives = {json_id: set() for json_id in images}
            for k, annotation in enumerate(_require_list(document, "annotations", source)):
                if not isinstance(annotation, dict):
                    raise DatasetError(f"{source}: annotations[{k}] is not an object")
                for key in ("image_id", "category_id"):
                    if not _is_id(annotation.get(key)):
                        raise DatasetError(f"{source}: annotations[{k}] has no usable {key!r}")
                json_id, category_id = annotation["image_id"], annotation["category_id"]
                if json_id in dropped:
                    continue
                if json_id not in images:
                    raise DatasetError(
                        f"{source}: annotations[{k}] refers to image id {json_id!r}, "
                        "which is not in 'images'"
                    )
                if category_id not in column:
                    error = DatasetError(
                        f"{source}: annotations[{k}] of image {json_id!r} has category_id "
                        f"{category_id!r}, which is not in 'categories'"
                    )
                    self._fail_or_skip(str(json_id), str(images[json_id][1]), error)
                    dropped.add(json_id)
                    del images[json_id], positives[json_id]
                    continue
                positives[json_id].add(column[category_id])

        ids = [image_id for image_id, _ in images.values()]
        paths = [path for _, path in images.values()]
        labels = None
        if positives is not None:
            labels = torch.zeros((len(ids), len(classes)), dtype=torch.bool)
            for i, json_id in enumerate(images):
                labels[i, sorted(positives[json_id])] = True
        self._set_index(classes, ids, paths, labels)

    @property
    def spec(self) -> str:
        return f"coco:{self.annotations_path}:{self.images_dir}"


def _load_json(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            document = json.load(handle)
    except json.JSONDecodeError as error:
        raise DatasetError(f"{path}: malformed JSON: {error}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetError(f"{path}: cannot read: {error}") from None
    if not isinstance(document, dict):
        raise DatasetError(f"{path}: expected a JSON object at the top level")
    return document


def _require_list(document: dict[str, Any], key: str, source: str) -> list[Any]:
    value = document.get(key)
    if not isinstance(value, list):
        problem = "is missing" if value is None else "is not a list"
        raise DatasetError(f"{source}: key {key!r} {problem} (not a COCO instances file?)")
    return value


def _is_id(value: Any) -> bool:
    # bool is an int subclass; true/false as an id is a broken file, not id 1/0.
    return isinstance(value, int | str) and not isinstance(value, bool)


def _id_text(json_id: Any, k: int) -> str:
    return str(json_id) if _is_id(json_id) else f"images[{k}]"


def _parse_categories(document: dict[str, Any], source: str) -> tuple[list[Any], list[str]]:
    """Category ids sorted, and their names in that order."""
    entries: list[tuple[Any, str]] = []
    for k, record in enumerate(_require_list(document, "categories", source)):
        if not isinstance(record, dict) or not _is_id(record.get("id")):
            raise DatasetError(f"{source}: categories[{k}] has no usable 'id'")
        name = record.get("name")
        if not isinstance(name, str) or not name.strip():
            raise DatasetError(f"{source}: categories[{k}] has no usable 'name'")
        entries.append((record["id"], name.strip()))
    if not entries:
        raise DatasetError(f"{source}: 'categories' is empty")
    try:
        entries.sort(key=lambda entry: entry[0])
    except TypeError:
        raise DatasetError(f"{source}: category ids mix numbers and strings") from None
    ids = [category_id for category_id, _ in entries]
    names = [name for _, name in entries]
    for values, what in ((ids, "id"), (names, "name")):
        repeated = sorted({str(v) for v in values if values.count(v) > 1})
        if repeated:
            raise DatasetError(f"{source}: category {what} repeated: {', '.join(repeated)}")
    return ids, names


def _parse_image(record: Any, k: int, source: str) -> tuple[Any, str]:
    """The id and checked file name of one entry of ``images``."""
    if not isinstance(record, dict):
        raise DatasetError(f"{source}: images[{k}] is not an object")
    json_id = record.get("id")
    if not _is_id(json_id):
        raise DatasetError(f"{source}: images[{k}] has no usable 'id'")
    file_name = record.get("file_name")
    if not isinstance(file_name, str):
        raise DatasetError(f"{source}: images[{k}] (id {json_id!r}) has no 'file_name'")
    safe_relative_path(file_name, what="file_name", source=f"{source}: images[{k}]")
    return json_id, file_name
