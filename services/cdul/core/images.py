"""Turn untrusted bytes or files into RGB PIL images, one way for the whole project.

The datasets, the CLIP similarity service and the TorchServe handler all decode images
through :func:`decode_image`, so an image is either accepted everywhere or refused
everywhere with the same message. Every refusal is an :class:`ImageDecodeError` (a
:class:`~cdul.core.errors.DatasetError`) whose message names the image and the problem;
the gRPC service maps it to ``INVALID_ARGUMENT``.

What is accepted: JPEG (including the MPO variant cameras write), PNG, WebP and BMP,
fully decoded (a truncated file is refused, never padded with grey), at most
``max_pixels`` pixels. What comes out: a mode ``"RGB"`` image, upright according to its
EXIF orientation. Animated PNG/WebP files give their first frame.

Conversions to RGB, and why:

* grayscale (``1``, ``L``, ``P``) is replicated to three channels;
* 16-bit grayscale (``I;16*``, ``I``) is scaled by 1/256, because PIL's own conversion
  clips every value above 255 to white instead of scaling;
* ``CMYK`` (print JPEGs) uses PIL's conversion;
* anything with transparency (``RGBA``, ``LA``, ``PA``, ``P`` with a transparent index)
  is composited onto **white**: transparent product shots and logos are meant to be
  seen on a white page, and CLIP's training photos look like that far more often than
  like black backgrounds.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from cdul.core.errors import DatasetError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "SUPPORTED_FORMATS",
    "ImageDecodeError",
    "decode_image",
    "open_image",
    "read_image_file",
]

#: Largest image (width x height) accepted by default: 50 megapixels. That is above any
#: phone or DSLR photo in the datasets this project targets (VOC/COCO images are under
#: 0.3 MP) and caps one decoded RGB image at 150 MB. PIL has its own, separate guard
#: (``PIL.Image.MAX_IMAGE_PIXELS``, about 89 MP, refused outright at twice that); a
#: caller who raises ``max_pixels`` above it must raise PIL's limit as well.
DEFAULT_MAX_PIXELS = 50_000_000

#: File-name extensions (lower case, with the dot) of the formats below; the folder
#: dataset compares them with ``Path.suffix.lower()``.
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp", ".bmp")

#: PIL format names accepted. "MPO" is how PIL reports a JPEG carrying extra pictures
#: (many camera JPEGs do); its first picture is an ordinary JPEG.
SUPPORTED_FORMATS: frozenset[str] = frozenset({"JPEG", "MPO", "PNG", "WEBP", "BMP"})

_EXIF_ORIENTATION = 0x0112
_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"BM", "BMP"),
    (b"GIF8", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})


class ImageDecodeError(DatasetError):
    """The bytes are not an image this project accepts; the message says which and why."""


def decode_image(
    data: bytes | bytearray | memoryview,
    *,
    name: str = "<bytes>",
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """Decode ``data`` into an upright RGB image, or raise :class:`ImageDecodeError`.

    ``name`` only appears in error messages (a file name, a request id). The pixel
    limit is checked from the header, before any pixel is decoded, so an image that
    claims to be 100000x100000 costs a few hundred bytes of parsing to refuse.
    """
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be positive, got {max_pixels}")
    if len(data) == 0:
        raise ImageDecodeError(f"image {name!r} is empty (0 bytes)")
    try:
        # PIL only warns between MAX_IMAGE_PIXELS and twice that; make the warning an
        # exception so such an image is refused here and not decoded. (catch_warnings
        # is process-global: under threads the filter may briefly be lost, which only
        # lets the warning print, because the explicit check below still refuses.)
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageDecodeError(f"image {name!r} is over PIL's pixel limit: {error}") from None
    except Image.UnidentifiedImageError:
        claimed = _sniff(bytes(data[:16]))
        if claimed is not None:
            raise ImageDecodeError(
                f"image {name!r} starts like a {claimed} file but its header cannot be parsed"
            ) from None
        raise ImageDecodeError(
            f"image {name!r} is not a JPEG, PNG, WebP or BMP image "
            f"({len(data)} bytes in a format PIL cannot identify)"
        ) from None
    except Exception as error:  # PIL's header parsers raise many types on garbage input
        raise ImageDecodeError(f"image {name!r} has an unreadable header: {error}") from None

    # `image` is never closed: close() would destroy the decoded pixels we return, and
    # the BytesIO behind it holds no operating-system resource.
    if image.format not in SUPPORTED_FORMATS:
        raise ImageDecodeError(
            f"image {name!r} is {image.format}, not one of the supported formats "
            "JPEG, PNG, WebP, BMP"
        )
    width, height = image.size
    if width * height > max_pixels:
        raise ImageDecodeError(
            f"image {name!r} is {width}x{height} = {width * height} pixels, "
            f"over the limit of {max_pixels}"
        )
    try:
        # load() decodes every pixel now; a truncated or corrupt stream fails here
        # (ImageFile.LOAD_TRUNCATED_IMAGES is deliberately left False).
        image.load()
    except Exception as error:  # decoders raise OSError, SyntaxError, ValueError...
        raise ImageDecodeError(
            f"image {name!r} ({image.format}, {width}x{height}) is corrupt or truncated: {error}"
        ) from None
    return _to_rgb(_upright(image))


def open_image(
    path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Image.Image:
    """Read and decode the image file at ``path``; errors name the path.

    The whole file is read first so the file handle is closed before decoding and the
    same code path as :func:`decode_image` is used.
    """
    return decode_image(read_image_file(path), name=os.fspath(path), max_pixels=max_pixels)


def read_image_file(path: str | os.PathLike[str]) -> bytes:
    """The bytes of the image file at ``path``; ImageDecodeError naming it if unreadable."""
    name = os.fspath(path)
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise ImageDecodeError(f"image file {name!r} does not exist") from None
    except OSError as error:
        raise ImageDecodeError(f"cannot read image file {name!r}: {error.strerror}") from None


def _sniff(head: bytes) -> str | None:
    """The format a file's first bytes claim, to tell "broken PNG" from "not an image"."""
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    return None


def _upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag, so pixels come out the way viewers show them."""
    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
        if orientation not in range(2, 9):
            return image  # exif_transpose would return a full copy for nothing
        upright = ImageOps.exif_transpose(image)
    except Exception:  # broken EXIF must not refuse an image whose pixels are fine
        return image
    return image if upright is None else upright


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any mode the supported formats produce to RGB (see the module docstring)."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _SIXTEEN_BIT_MODES:
        pixels = np.asarray(image).astype(np.int64)
        eight_bit = (np.clip(pixels, 0, 65535) >> 8).astype(np.uint8)
        return Image.fromarray(eight_bit).convert("RGB")
    if mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")
