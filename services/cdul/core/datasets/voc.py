"""PASCAL VOC layout reader: ``Annotations/*.xml``, ``JPEGImages/``, ``ImageSets/Main/``.

Ground truth rules (the image-level labels a multi-label classifier is scored on):

* an object marks its image positive for its class whether or not it is
  ``<occluded>`` or ``<truncated>`` (as the reproducibility study does);
* ``difficult="exclude"`` (the default): an object with ``<difficult>1`` does not make
  the image positive, as in the VOC devkit's classification ground truth. (The devkit
  goes further and leaves such images out of that class's AP; a 0/1 label cannot say
  "ignore", so here they count as negatives, which changes VOC mAP very little.)
  ``difficult="include"``: difficult objects count like any other.

Classes are the 20 VOC classes in the standard order, unless ``ROOT/classes.txt``
exists: then it lists the classes, one per line (blank lines and ``#`` comments
ignored). That file is this project's extension for custom datasets in VOC layout,
such as the synthetic world the demo generates.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import torch

from cdul.core.datasets.base import IndexedDataset, safe_relative_path
from cdul.core.errors import ConfigError, DatasetError
from cdul.core.images import DEFAULT_MAX_PIXELS
from cdul.core.label_set import read_class_file

__all__ = ["DIFFICULT_MODES", "VOC_CLASSES", "VocDataset"]

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip

DIFFICULT_MODES: tuple[str, ...] = ("exclude", "include")

_DIFFICULT_VALUES = {"0": False, "1": True, "false": False, "true": True, "": False}


class VocDataset(IndexedDataset):
    """The images of one VOC split with their multi-hot labels.

    ``root`` holds ``Annotations``, ``JPEGImages`` and ``ImageSets/Main/<split>.txt``.
    Each image's file is the XML's ``<filename>`` under ``JPEGImages`` (``<id>.jpg``
    when absent), so PNG or WebP images in VOC layout work too.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "val",
        *,
        difficult: str = "exclude",
        skip_bad: bool = False,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        super().__init__(
            classes=(), ids=[], paths=[], labels=None, skip_bad=skip_bad, max_pixels=max_pixels
        )
        if difficult not in DIFFICULT_MODES:
            raise ConfigError(f"difficult={difficult!r} is not one of {', '.join(DIFFICULT_MODES)}")
        if not split or any(c in split for c in "/\\:") or split.startswith("."):
            # The split names a file under ImageSets/Main; it must not point elsewhere.
            raise ConfigError(f"VOC split {split!r} must be a plain name such as 'val'")
        self.root = Path(root)
        self.split = split
        self.difficult = difficult
        if not self.root.is_dir():
            raise ConfigError(f"VOC root {str(self.root)!r} is not a directory")
        for sub in ("Annotations", "JPEGImages"):
            if not (self.root / sub).is_dir():
                raise DatasetError(f"{self.root} is not in VOC layout: {sub}/ is missing")

        classes = _read_classes(self.root)
        class_index = {name: k for k, name in enumerate(classes)}
        ids: list[str] = []
        paths: list[Path] = []
        positives: list[list[int]] = []
        for image_id in self._split_ids():
            xml_path = self.root / "Annotations" / f"{image_id}.xml"
            try:
                filename, row = self._parse_annotation(xml_path, image_id, class_index)
            except DatasetError as error:
                self._fail_or_skip(image_id, str(xml_path), error)
                continue
            ids.append(image_id)
            paths.append(self.root / "JPEGImages" / filename)
            positives.append(row)

        labels = torch.zeros((len(ids), len(classes)), dtype=torch.bool)
        for i, row in enumerate(positives):
            labels[i, row] = True
        self._set_index(classes, ids, paths, labels)

    @property
    def spec(self) -> str:
        return f"voc:{self.root}:{self.split}"

    def _split_ids(self) -> list[str]:
        """Ids listed in the split file, in order; a repeated id is an error (or skipped)."""
        main = self.root / "ImageSets" / "Main"
        split_file = main / f"{self.split}.txt"
        if not split_file.is_file():
            # Class-specific lists (aeroplane_val.txt) are not splits; hide them.
            found = sorted(p.stem for p in main.glob("*.txt") if "_" not in p.stem)
            raise ConfigError(
                f"VOC split file {split_file} does not exist; "
                f"splits found: {', '.join(found) or 'none'}"
            )
        try:
            lines = split_file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise DatasetError(f"cannot read VOC split file {split_file}: {error}") from None
        seen: set[str] = set()
        ids: list[str] = []
        for number, line in enumerate(lines, start=1):
            # The first token only: class-specific lists carry a second "-1/0/1" column.
            tokens = line.split()
            if not tokens:
                continue
            image_id = tokens[0]
            if image_id in seen:
                error = DatasetError(f"{split_file}:{number}: image id {image_id!r} listed twice")
                self._fail_or_skip(image_id, str(split_file), error)
                continue
            seen.add(image_id)
            ids.append(image_id)
        return ids

    def _parse_annotation(
        self, xml_path: Path, image_id: str, class_index: dict[str, int]
    ) -> tuple[str, list[int]]:
        """Return the image file name and the positive class indices of one XML file."""
        if not xml_path.is_file():
            raise DatasetError(
                f"{xml_path}: annotation missing for image id {image_id!r} "
                f"listed in split {self.split!r}"
            )
        try:
            annotation = ET.parse(xml_path).getroot()
        except ET.ParseError as error:
            raise DatasetError(f"{xml_path}: malformed XML: {error}") from None
        except OSError as error:
            raise DatasetError(f"{xml_path}: cannot read: {error.strerror}") from None

        filename = (annotation.findtext("filename") or "").strip() or f"{image_id}.jpg"
        safe_relative_path(filename, what="<filename>", source=str(xml_path))
        positives: set[int] = set()
        for number, obj in enumerate(annotation.findall("object"), start=1):
            name = (obj.findtext("name") or "").strip()
            if not name:
                raise DatasetError(f"{xml_path}: object #{number} has no <name>")
            if name not in class_index:
                source = "classes.txt" if (self.root / "classes.txt").is_file() else "VOC"
                raise DatasetError(
                    f"{xml_path}: object #{number} is named {name!r}, which is not one of "
                    f"the {len(class_index)} {source} classes"
                )
            flag = (obj.findtext("difficult") or "").strip().lower()
            if flag not in _DIFFICULT_VALUES:
                raise DatasetError(
                    f"{xml_path}: object #{number} ({name}) has <difficult>{flag}</difficult>, "
                    "expected 0 or 1"
                )
            if _DIFFICULT_VALUES[flag] and self.difficult == "exclude":
                continue
            positives.add(class_index[name])
        return filename, sorted(positives)


def _read_classes(root: Path) -> tuple[str, ...]:
    """The 20 VOC classes, or the ones ``root/classes.txt`` lists."""
    path = root / "classes.txt"
    return read_class_file(path, DatasetError) if path.is_file() else VOC_CLASSES
