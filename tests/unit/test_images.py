"""cdul.core.images: one decoder that refuses bad input clearly and returns upright RGB."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
from fixtures_datasets import (
    cmyk_jpeg,
    encode,
    gray16_png,
    jpeg,
    marked_jpeg,
    noise,
    png_claiming,
    rgba_png,
    truncated_jpeg,
)
from PIL import Image

from cdul.core.errors import DatasetError
from cdul.core.images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    ImageDecodeError,
    decode_image,
    open_image,
)


def pixel(image: Image.Image, x: int, y: int) -> tuple[int, int, int]:
    return tuple(int(v) for v in np.asarray(image)[y, x])


def test_decode_error_is_a_dataset_error() -> None:
    assert issubclass(ImageDecodeError, DatasetError)


@pytest.mark.parametrize(
    ("fmt", "params"),
    [("JPEG", {"quality": 95}), ("PNG", {}), ("WEBP", {"lossless": True}), ("BMP", {})],
)
def test_supported_formats_decode_to_rgb(fmt: str, params: dict[str, object]) -> None:
    image = decode_image(encode(noise((33, 17)), fmt, **params))
    assert image.mode == "RGB"
    assert image.size == (33, 17)


def test_lossless_round_trip_keeps_pixels() -> None:
    source = noise((9, 7), seed=3)
    assert np.array_equal(np.asarray(decode_image(encode(source, "PNG"))), np.asarray(source))


def test_mpo_camera_jpeg_is_accepted() -> None:
    frames = [Image.new("RGB", (8, 6), color) for color in [(255, 0, 0), (0, 255, 0)]]
    data = encode(frames[0], "MPO", save_all=True, append_images=frames[1:])
    image = decode_image(data)
    assert image.size == (8, 6)
    assert pixel(image, 4, 3)[0] > 200


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"", "is empty (0 bytes)"),
        (np.random.default_rng(1).bytes(3000), "is not a JPEG, PNG, WebP or BMP image"),
        (b"label,score\ncat,0.9\n" * 20, "is not a JPEG, PNG, WebP or BMP image"),
        (truncated_jpeg(), "truncated"),
        (jpeg()[:40], "x.jpg"),  # cut inside the header
        (encode(noise((8, 8)), "GIF"), "is GIF, not one of the supported formats"),
        (encode(noise((8, 8)), "TIFF"), "is TIFF"),
    ],
    ids=["empty", "random", "text", "truncated-jpeg", "header-cut", "gif", "tiff"],
)
def test_bad_bytes_raise_naming_the_image(data: bytes, problem: str) -> None:
    with pytest.raises(ImageDecodeError) as caught:
        decode_image(data, name="x.jpg")
    assert "'x.jpg'" in str(caught.value)
    assert problem in str(caught.value)


def test_size_is_checked_from_the_header_before_decoding() -> None:
    # 81 MP: over our 50 MP default, under PIL's own guard; the file has no real pixel
    # data, so reaching the decoder would report truncation instead.
    data = png_claiming(9000, 9000)
    start = time.perf_counter()
    with pytest.raises(ImageDecodeError) as caught:
        decode_image(data, name="big.png")
    assert time.perf_counter() - start < 0.5
    assert str(caught.value) == (
        f"image 'big.png' is 9000x9000 = 81000000 pixels, over the limit of {DEFAULT_MAX_PIXELS}"
    )


@pytest.mark.parametrize("side", [10_000, 20_000, 100_000])
def test_decompression_bombs_are_refused_without_warnings(side: int) -> None:
    # 10000^2 is where PIL only warns, 20000^2 and up where PIL raises its own error.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageDecodeError, match=r"'bomb\.png' is over PIL's pixel limit"):
            decode_image(png_claiming(side, side), name="bomb.png", max_pixels=10**12)


def test_small_max_pixels() -> None:
    data = jpeg((100, 100))
    with pytest.raises(ImageDecodeError, match=r"100x100 = 10000 pixels, over the limit of 9999"):
        decode_image(data, max_pixels=9999)
    assert decode_image(data, max_pixels=10_000).size == (100, 100)
    with pytest.raises(ValueError):
        decode_image(data, max_pixels=0)


@pytest.mark.parametrize(
    ("orientation", "size", "red_at"),
    [
        (1, (40, 20), (3, 3)),
        (3, (40, 20), (36, 16)),
        (6, (20, 40), (16, 3)),
        (8, (20, 40), (3, 36)),
    ],
)
def test_exif_orientation_is_applied(
    orientation: int, size: tuple[int, int], red_at: tuple[int, int]
) -> None:
    # The red block sits in the stored top-left corner; 3 = rotate 180, 6 = rotate 90
    # clockwise (to the top-right), 8 = rotate 90 counter-clockwise (to the bottom-left).
    image = decode_image(marked_jpeg(orientation))
    assert image.size == size
    red, green, blue = pixel(image, *red_at)
    assert red > 200 and green < 60 and blue < 60


def test_grayscale_modes_become_rgb() -> None:
    for source in [
        Image.new("L", (4, 4), 90),
        Image.new("1", (4, 4), 1),
        Image.new("L", (4, 4), 90).convert("P"),
    ]:
        image = decode_image(encode(source, "PNG"))
        assert image.mode == "RGB"
        r, g, b = pixel(image, 1, 1)
        assert r == g == b


def test_sixteen_bit_grayscale_is_scaled_not_clipped() -> None:
    image = decode_image(gray16_png([0, 25600, 65535]))
    assert image.mode == "RGB"
    assert [pixel(image, x, 0) for x in range(3)] == [(0, 0, 0), (100, 100, 100), (255,) * 3]


def test_cmyk_jpeg_becomes_rgb() -> None:
    image = decode_image(cmyk_jpeg())
    assert image.mode == "RGB"
    red, green, blue = pixel(image, 4, 4)
    assert red > 200 and green < 60 and blue > 200  # magenta


def test_transparency_is_composited_onto_white() -> None:
    image = decode_image(rgba_png())
    assert image.mode == "RGB"
    assert pixel(image, 0, 0) == (255, 0, 0)
    assert pixel(image, 1, 0) == (255, 255, 255)  # fully transparent -> white
    assert pixel(image, 2, 0)[0] == 255 and 120 <= pixel(image, 2, 0)[1] <= 135
    assert pixel(image, 3, 0) == (0, 0, 0)
    la = decode_image(encode(Image.new("LA", (2, 2), (0, 0)), "PNG"))
    assert pixel(la, 0, 0) == (255, 255, 255)
    palette = Image.new("P", (2, 2), 0)
    palette.info["transparency"] = 0
    assert pixel(decode_image(encode(palette, "PNG", transparency=0)), 1, 1) == (255, 255, 255)


def test_open_image_names_the_path(tmp_path) -> None:
    good = tmp_path / "good.jpg"
    good.write_bytes(jpeg())
    assert open_image(good).mode == "RGB"
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(truncated_jpeg())
    with pytest.raises(ImageDecodeError, match=str(bad)):
        open_image(bad)
    with pytest.raises(ImageDecodeError, match="does not exist"):
        open_image(tmp_path / "missing.jpg")
    with pytest.raises(ImageDecodeError, match="cannot read"):
        open_image(tmp_path)  # a directory


def test_image_extensions() -> None:
    assert IMAGE_EXTENSIONS == (".jpg", ".jpeg", ".png", ".webp", ".bmp")
