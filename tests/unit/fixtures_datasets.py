"""Writers of tiny images and dataset trees (VOC, COCO, folder) for the unit tests.

Everything is generated in a few milliseconds, so each test builds its own tree in
``tmp_path`` and no fixture files live in the repository.
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

RED = (255, 0, 0)


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def noise(size: tuple[int, int] = (64, 48), seed: int = 0) -> Image.Image:
    """An RGB image of random pixels (compresses badly, so truncation hits pixel data)."""
    rng = np.random.default_rng(seed)
    width, height = size
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def jpeg(size: tuple[int, int] = (32, 24), color: tuple[int, ...] = (10, 120, 200)) -> bytes:
    return encode(Image.new("RGB", size, color), "JPEG", quality=95)


def marked_jpeg(orientation: int) -> bytes:
    """A 40x20 blue JPEG with a red block in its stored top-left corner and an EXIF
    orientation tag, to see where the block ends up once the image is made upright."""
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    image.paste(RED, (0, 0, 10, 8))
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(image, "JPEG", quality=95, exif=exif.tobytes())


def truncated_jpeg() -> bytes:
    data = encode(noise(), "JPEG", quality=90)
    return data[: len(data) // 2]


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels, with almost no pixel data:
    decoding it would fail, so an error about its size proves the size came first."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )


def gray16_png(values: list[int]) -> bytes:
    """A 1-row 16-bit grayscale PNG (PIL mode I;16) with the given values."""
    return encode(Image.fromarray(np.array([values], dtype=np.uint16)), "PNG")


def rgba_png() -> bytes:
    """4x1 RGBA: opaque red, fully transparent, half-transparent red, opaque black."""
    image = Image.new("RGBA", (4, 1))
    for x, pixel in enumerate([(255, 0, 0, 255), (0, 0, 0, 0), (255, 0, 0, 128), (0, 0, 0, 255)]):
        image.putpixel((x, 0), pixel)
    return encode(image, "PNG")


def cmyk_jpeg() -> bytes:
    return encode(Image.new("CMYK", (8, 8), (0, 255, 0, 0)), "JPEG", quality=95)  # magenta


# -- VOC ------------------------------------------------------------------------------


def voc_xml(objects: list[dict[str, object]], filename: str | None = None) -> str:
    """An annotation; each object dict has a name and optional difficult/occluded/truncated."""
    parts = ["<annotation>", "<folder>VOC2012</folder>"]
    if filename is not None:
        parts.append(f"<filename>{filename}</filename>")
    for obj in objects:
        parts.append("<object>")
        if "name" in obj:
            parts.append(f"<name>{obj['name']}</name>")
        for flag in ("difficult", "occluded", "truncated"):
            if flag in obj:
                parts.append(f"<{flag}>{obj[flag]}</{flag}>")
        parts.append("<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox>")
        parts.append("</object>")
    parts.append("</annotation>")
    return "\n".join(parts)


# id -> (image file name or None for the <id>.jpg default, image bytes, objects)
def _voc_items() -> dict[str, tuple[str | None, bytes, list[dict[str, object]]]]:
    return {
        "2008_000001": (
            "2008_000001.jpg",
            jpeg(),
            [{"name": "person", "occluded": 1}, {"name": "dog", "truncated": 1}],
        ),
        "2008_000002": (
            "2008_000002.jpg",
            jpeg(),
            [{"name": "cat", "difficult": 1}, {"name": "car"}, {"name": "car", "difficult": 1}],
        ),
        "2008_000003": ("2008_000003.png", encode(noise((20, 10)), "PNG"), [{"name": "bird"}]),
        "2008_000004": (None, encode(Image.new("L", (16, 16), 90), "JPEG"), [{"name": "sheep"}]),
        "2008_000005": ("2008_000005.jpg", marked_jpeg(6), [{"name": "boat"}]),
        "2008_000006": ("2008_000006.jpg", b"\x00garbage, not a jpeg", [{"name": "cow"}]),
    }


VOC_IDS = list(_voc_items())
CORRUPT_VOC_ID = "2008_000006"

# Annotations that must be refused, by split name: (xml text, expected message part).
BROKEN_VOC = {
    "badxml": ("<annotation><object><name>cat</name></annotation>", "malformed XML"),
    "unknown": (voc_xml([{"name": "unicorn"}]), "'unicorn'"),
    "noname": (voc_xml([{"difficult": 0}]), "has no <name>"),
    "baddifficult": (voc_xml([{"name": "cat", "difficult": "maybe"}]), "<difficult>maybe"),
    "escape": (voc_xml([{"name": "cat"}], filename="../../etc/passwd"), "relative path"),
}


def write_voc(root: Path, classes: list[str] | None = None) -> Path:
    """A VOC tree: split ``val`` holds the six items above (one with a corrupt image);
    split ``<name>`` for each entry of BROKEN_VOC holds item 1 and a broken one, and
    split ``noann`` lists an id that has no annotation."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for image_id, (filename, data, objects) in _voc_items().items():
        (root / "Annotations" / f"{image_id}.xml").write_text(voc_xml(objects, filename))
        (root / "JPEGImages" / (filename or f"{image_id}.jpg")).write_bytes(data)
    main = root / "ImageSets" / "Main"
    (main / "val.txt").write_text("\n".join(VOC_IDS) + "\n")
    (main / "person_val.txt").write_text("2008_000001  1\n")  # class list, not a split
    for split, (xml, _) in BROKEN_VOC.items():
        (root / "Annotations" / f"bad_{split}.xml").write_text(xml)
        (main / f"{split}.txt").write_text(f"2008_000001\nbad_{split}\n")
    (main / "noann.txt").write_text("2008_000001\n2008_999999\n")
    (main / "twice.txt").write_text("2008_000001\n2008_000002\n2008_000001\n")
    if classes is not None:
        (root / "classes.txt").write_text("# custom classes\n" + "\n".join(classes) + "\n\n")
    return root


# -- COCO -----------------------------------------------------------------------------

COCO_CLASSES = ("cat", "zebra", "dog")  # category ids 1, 3, 7


def coco_document() -> dict[str, object]:
    return {
        "info": {"description": "fixture"},
        "categories": [  # out of order and non-contiguous on purpose
            {"id": 7, "name": "dog", "supercategory": "animal"},
            {"id": 1, "name": "cat", "supercategory": "animal"},
            {"id": 3, "name": "zebra", "supercategory": "animal"},
        ],
        "images": [
            {"id": 42, "file_name": "000042.jpg", "width": 32, "height": 24},
            {"id": 7, "file_name": "sub/000007.png", "width": 20, "height": 10},
            {"id": 100, "file_name": "000100.jpg", "width": 32, "height": 24},
        ],
        "annotations": [
            {"id": 1, "image_id": 42, "category_id": 1, "iscrowd": 0},
            {"id": 2, "image_id": 42, "category_id": 7, "iscrowd": 1},  # crowd counts
            {"id": 3, "image_id": 7, "category_id": 3, "iscrowd": 0},
            {"id": 4, "image_id": 7, "category_id": 3, "iscrowd": 0},
        ],  # image 100 has no annotations
    }


def write_coco(root: Path, document: dict[str, object] | str | None = None) -> tuple[Path, Path]:
    """Images plus an instances file (``document`` replaces the default; a str is
    written verbatim). Returns (annotation file, images dir)."""
    images = root / "images"
    (images / "sub").mkdir(parents=True, exist_ok=True)
    (images / "000042.jpg").write_bytes(jpeg())
    (images / "sub" / "000007.png").write_bytes(encode(noise((20, 10)), "PNG"))
    (images / "000100.jpg").write_bytes(jpeg())
    annotations = root / "instances_val.json"
    if document is None:
        document = coco_document()
    text = document if isinstance(document, str) else json.dumps(document)
    annotations.write_text(text)
    return annotations, images


# -- folder ---------------------------------------------------------------------------

FOLDER_IDS = [
    "a.JPG",
    "b.Png",
    "cmyk.jpeg",
    "gray16.png",
    "nested/c.webp",
    "nested/deeper/d.bmp",
]


def write_folder(root: Path) -> Path:
    """Mixed-case extensions, nesting, odd modes, and files that must be ignored."""
    (root / "nested" / "deeper").mkdir(parents=True)
    (root / ".cache").mkdir()
    (root / "a.JPG").write_bytes(jpeg())
    (root / "b.Png").write_bytes(rgba_png())
    (root / "cmyk.jpeg").write_bytes(cmyk_jpeg())
    (root / "gray16.png").write_bytes(gray16_png([0, 25600, 65535]))
    (root / "nested" / "c.webp").write_bytes(encode(noise((12, 8)), "WEBP"))
    (root / "nested" / "deeper" / "d.bmp").write_bytes(encode(noise((6, 6)), "BMP"))
    (root / "notes.txt").write_text("not an image")
    (root / "nested" / "labels.json").write_text("{}")
    (root / "._a.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # macOS resource fork
    (root / ".cache" / "thumb.jpg").write_bytes(jpeg())
    return root
