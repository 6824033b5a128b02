"""``s3://BUCKET/PREFIX`` is a dataset kind like the others, against a real S3 endpoint
on loopback: every command that takes a dataset spec (label, train, dataset) reads it."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from cdul.cli import main
from cdul.core.datasets import S3Dataset, open_dataset
from cdul.core.errors import ConfigError, DatasetError
from cdul.core.images import decode_image
from cdul.core.storage import open_store
from cdul.labeler.sources import open_source


def _jpeg(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), color).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


@pytest.fixture
def s3_images(s3_env: str) -> tuple[str, dict[str, bytes]]:
    prefix = f"{s3_env}/images"
    files = {"b/two.JPG": _jpeg((0, 200, 0)), "a/one.jpg": _jpeg((200, 0, 0)),
             "c.png": _jpeg((0, 0, 200)), "broken.jpg": b"\xff\xd8\xff not really"}  # fmt: skip
    store = open_store(prefix)
    for key, data in files.items():
        store.write_bytes(key, data)
    store.write_bytes("notes.txt", b"not an image")
    return prefix, files


def test_an_s3_prefix_opens_as_a_dataset(s3_images) -> None:
    prefix, files = s3_images
    dataset = open_dataset(prefix, classes=("red", "green"))
    assert isinstance(dataset, S3Dataset) and dataset.spec == prefix
    assert dataset.ids() == ["a/one.jpg", "b/two.JPG", "broken.jpg", "c.png"]  # no notes.txt
    assert dataset.classes == ("red", "green") and not dataset.has_ground_truth
    assert dataset.image_path(0) == f"{prefix}/a/one.jpg"
    sample = dataset.load(1)
    expected = decode_image(files["b/two.JPG"])
    assert sample.image.tobytes() == expected.tobytes() and sample.labels is None
    with pytest.raises(DatasetError, match=r"broken\.jpg"):
        dataset.load(2)
    tolerant = open_dataset(prefix, skip_bad=True)
    assert [s.image_id for s in tolerant] == ["a/one.jpg", "b/two.JPG", "c.png"]
    assert [s.image_id for s in tolerant.skipped] == ["broken.jpg"]


def test_the_labeler_source_reads_the_same_objects(s3_images) -> None:
    prefix, files = s3_images
    source = open_source(prefix, classes=("red", "green"), limit=2)
    assert source.ids == ["a/one.jpg", "b/two.JPG"] and source.ground_truth is None
    assert source.read(0) == files["a/one.jpg"]
    with pytest.raises(ConfigError, match="names no classes: give --classes"):
        open_source(prefix)


def test_bad_s3_specs_and_empty_prefixes_are_named(s3_env: str, capsys) -> None:
    with pytest.raises(ConfigError, match="an s3 spec is s3://BUCKET/PREFIX"):
        open_dataset("s3:/bucket")
    with pytest.raises(DatasetError, match="holds no images"):
        open_dataset(f"{s3_env}/nothing-here")
    assert main(["dataset", f"{s3_env}/nothing-here"]) == 2
    assert "holds no images" in capsys.readouterr().err


def test_cdul_dataset_reads_an_s3_prefix(s3_images, capsys) -> None:
    prefix, _ = s3_images
    assert main(["dataset", prefix, "--decode", "--skip-bad"]) == 0
    out = capsys.readouterr().out
    assert f"{prefix}: 4 images" in out and "decoded 3 of 4" in out and "broken.jpg" in out


def test_local_datasets_read_through_the_same_method(tmp_path: Path) -> None:
    (tmp_path / "x.jpg").write_bytes(_jpeg((1, 2, 3)))
    folder = open_dataset(f"folder:{tmp_path}")
    assert folder.read_bytes(0) == (tmp_path / "x.jpg").read_bytes()
