"""The embedded world: captioned single objects and multi-object scenes in VOC layout.

Nothing can be downloaded on the project's machines, so the project carries a small
procedural world in which CLIP-driven pseudo labels mean something:

- **singles** (64 px): one object, with a caption ("a photo of a star", "a red star",
  ...) for pre-training the tiny CLIP, and a label for the world's backbone;
- **scenes** (128 px): 1-4 objects of distinct classes in distinct cells of a 3x3
  layout (about 2.4 per scene), sized so neighbours sometimes overlap, written in
  **VOC layout** so the VOC reader is the path that reads them.

Every image is a pure function of ``(seed, stream, index)``: a generator run twice
with one seed writes byte-identical files.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree as ET

import numpy as np
from PIL import Image
from tqdm import tqdm

from cdul.world.shapes import COLOURS, SHAPES, background, paste_object

SINGLE_SIZE = 64
SCENE_SIZE = 128
PROMPT_TEMPLATE = "a photo of a {}"
# Weighted towards the downstream prompt: uniform templates hurt zero-shot accuracy.
CAPTION_TEMPLATES: tuple[tuple[str, float], ...] = (
    ("a photo of a {shape}", 0.5),
    ("a {colour} {shape}", 0.2),
    ("a photo of a {colour} {shape}", 0.15),
    ("a drawing of a {shape}", 0.15),
)
OBJECTS_PER_SCENE = (1, 2, 3, 4)
OBJECTS_PER_SCENE_P = (0.2, 0.35, 0.3, 0.15)  # mean 2.4
OCCLUDED_IF_COVERED = 0.05  # share of an object's pixels hidden by later objects
DIFFICULT_IF_VISIBLE_BELOW = 0.3
_STREAMS = {"pretrain": 1, "heldout": 2, "train": 3, "val": 4, "test": 5}
_COLOUR_NAMES = tuple(COLOURS)


def _rng(seed: int, stream: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, _STREAMS[stream], index])


@dataclass(frozen=True)
class Single:
    image: Image.Image
    shape: str
    colour: str
    caption: str

    @property
    def label(self) -> int:
        return SHAPES.index(self.shape)


@dataclass(frozen=True)
class SceneObject:
    shape: str
    box: tuple[int, int, int, int]  # xmin, ymin, xmax, ymax (VOC: 1-based, inclusive)
    truncated: bool
    occluded: bool
    difficult: bool


@dataclass(frozen=True)
class Scene:
    image: Image.Image
    objects: tuple[SceneObject, ...]

    @property
    def labels(self) -> frozenset[str]:
        return frozenset(o.shape for o in self.objects)


def make_single(seed: int, index: int, stream: str = "pretrain", size: int = SINGLE_SIZE) -> Single:
    """One captioned object on a background."""
    rng = _rng(seed, stream, index)
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    colour = _COLOUR_NAMES[int(rng.integers(len(_COLOUR_NAMES)))]
    canvas = background(rng, size, size)
    obj = int(rng.uniform(0.3, 0.9) * size)  # small ones too: a scene seen whole
    left, top = (int(v) for v in rng.integers(0, size - obj + 1, size=2))
    paste_object(canvas, rng, shape, colour, obj, left, top)
    templates, weights = zip(*CAPTION_TEMPLATES, strict=True)
    template = templates[int(rng.choice(len(templates), p=np.array(weights)))]
    return Single(canvas, shape, colour, template.format(shape=shape, colour=colour))


def make_scene(seed: int, index: int, stream: str = "train", size: int = SCENE_SIZE) -> Scene:
    """1-4 objects of distinct classes in distinct cells of a 3x3 layout."""
    rng = _rng(seed, stream, index)
    count = int(rng.choice(OBJECTS_PER_SCENE, p=np.array(OBJECTS_PER_SCENE_P)))
    shapes = [SHAPES[int(i)] for i in rng.choice(len(SHAPES), size=count, replace=False)]
    cells = [int(c) for c in rng.choice(9, size=count, replace=False)]
    canvas = background(rng, size, size)
    cell = size / 3
    masks = []
    for shape, c in zip(shapes, cells, strict=True):
        obj = int(rng.uniform(0.7, 1.1) * cell)
        cx = (c % 3 + 0.5 + rng.uniform(-0.15, 0.15)) * cell
        cy = (c // 3 + 0.5 + rng.uniform(-0.15, 0.15)) * cell
        left, top = round(cx - obj / 2), round(cy - obj / 2)
        colour = _COLOUR_NAMES[int(rng.integers(len(_COLOUR_NAMES)))]
        mask = paste_object(canvas, rng, shape, colour, obj, left, top)
        truncated = left < 0 or top < 0 or left + obj > size or top + obj > size
        masks.append((shape, mask, truncated))
    objects = []
    for i, (shape, mask, truncated) in enumerate(masks):
        covered = np.zeros_like(mask)
        for _, later, _ in masks[i + 1 :]:
            covered |= later
        visible = mask & ~covered
        area = max(int(mask.sum()), 1)
        hidden = 1.0 - visible.sum() / area
        ys, xs = np.nonzero(visible if visible.any() else mask)
        box = (int(xs.min()) + 1, int(ys.min()) + 1, int(xs.max()) + 1, int(ys.max()) + 1)
        objects.append(
            SceneObject(
                shape=shape,
                box=box,
                truncated=truncated,
                occluded=hidden > OCCLUDED_IF_COVERED,
                difficult=(1.0 - hidden) < DIFFICULT_IF_VISIBLE_BELOW,
            )
        )
    return Scene(canvas, tuple(objects))


def voc_annotation(image_id: str, scene: Scene) -> bytes:
    """The VOC XML for one scene (deterministic bytes)."""
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "JPEGImages"
    ET.SubElement(root, "filename").text = f"{image_id}.jpg"
    size = ET.SubElement(root, "size")
    for tag, value in (("width", scene.image.width), ("height", scene.image.height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    for obj in scene.objects:
        node = ET.SubElement(root, "object")
        ET.SubElement(node, "name").text = obj.shape
        ET.SubElement(node, "pose").text = "Unspecified"
        ET.SubElement(node, "truncated").text = str(int(obj.truncated))
        ET.SubElement(node, "occluded").text = str(int(obj.occluded))
        ET.SubElement(node, "difficult").text = str(int(obj.difficult))
        box = ET.SubElement(node, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), obj.box, strict=True):
            ET.SubElement(box, tag).text = str(value)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=False) + b"\n"


def write_voc_world(
    root: str | Path,
    seed: int = 0,
    train: int = 2000,
    val: int = 500,
    size: int = SCENE_SIZE,
    progress: bool = True,
) -> Path:
    """Write ``train`` + ``val`` scenes under ``root`` in VOC layout; returns ``root``.

    Also writes ``classes.txt`` (the VOC reader's extension for custom class lists).
    Image ids are ``{split}_{index:06d}``.
    """
    root = Path(root)
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(SHAPES) + "\n", encoding="utf-8")
    total = train + val
    bar = tqdm(total=total, desc="world scenes", unit="img", disable=not progress)
    for split, count in (("train", train), ("val", val)):
        ids = []
        for image_id, scene in _scenes(seed, split, count, size):
            scene.image.save(root / "JPEGImages" / f"{image_id}.jpg", quality=95)
            (root / "Annotations" / f"{image_id}.xml").write_bytes(voc_annotation(image_id, scene))
            ids.append(image_id)
            bar.update()
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    bar.close()
    return root


def _scenes(seed: int, split: str, count: int, size: int) -> Iterator[tuple[str, Scene]]:
    """``(image id, scene)`` of one split, ids ``{split}_{index:06d}``."""
    for index in range(count):
        yield f"{split}_{index:06d}", make_scene(seed, index, stream=split, size=size)


def write_wds_world(
    root: str | Path,
    seed: int = 0,
    train: int = 2000,
    val: int = 500,
    shard_size: int = 100,
    size: int = SCENE_SIZE,
    progress: bool = True,
) -> Path:
    """The same scenes as :func:`write_voc_world` (same ids, same JPEG bytes) as
    WebDataset tar shards: ``root/{split}-{00000..}.tar``, ``shard_size`` samples each,
    every sample ``ID.jpg`` and ``ID.json`` (``{"labels": [every object's shape]}``); plus
    ``classes.txt``. Read with ``wds:root/val-{00000..0000N}.tar``."""
    import io
    import json
    import tarfile

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(SHAPES) + "\n", encoding="utf-8")

    def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o644  # reproducible bytes
        tar.addfile(info, io.BytesIO(data))

    bar = tqdm(total=train + val, desc="world scenes (tar shards)", unit="img",
               disable=not progress)  # fmt: skip
    for split, count in (("train", train), ("val", val)):
        scenes = _scenes(seed, split, count, size)
        for shard in range((count + shard_size - 1) // shard_size):
            with tarfile.open(
                root / f"{split}-{shard:05d}.tar", "w", format=tarfile.PAX_FORMAT
            ) as tar:
                for image_id, scene in itertools.islice(scenes, shard_size):
                    jpeg = io.BytesIO()
                    scene.image.save(jpeg, format="JPEG", quality=95)
                    add(tar, f"{image_id}.jpg", jpeg.getvalue())
                    names = sorted({obj.shape for obj in scene.objects})
                    add(tar, f"{image_id}.json", json.dumps({"labels": names}).encode())
                    bar.update()
    bar.close()
    return root
