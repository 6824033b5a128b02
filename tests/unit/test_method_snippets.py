"""Snippet specs: parsing, boxes by hand, leftovers, and errors."""

import pytest
from PIL import Image

from cdul.core.errors import ConfigError
from cdul.core.method.snippets import (
    SNIPPET_FORMS,
    SNIPPET_SPECS,
    DenseSpec,
    GridSpec,
    PatchSpec,
    crop_snippets,
    parse_snippet_spec,
)


def test_parse_forms():
    assert parse_snippet_spec("grid:3x3") == GridSpec(3, 3)
    assert parse_snippet_spec(" GRID:2x4 ") == GridSpec(2, 4)
    assert parse_snippet_spec("patch:16") == PatchSpec(16, 16)
    assert parse_snippet_spec("patch:32/16") == PatchSpec(32, 16)
    assert str(GridSpec(3, 3)) == "grid:3x3"
    assert str(PatchSpec(16, 16)) == "patch:16"
    assert str(PatchSpec(32, 16)) == "patch:32/16"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("grid:0x3", "rows and columns must be >= 1"),
        ("grid:0x0", "rows and columns must be >= 1"),
        ("grid:3", "unknown snippet spec"),
        ("patch:-1", "patch size must be >= 1"),
        ("patch:0", "patch size must be >= 1"),
        ("patch:8/0", "stride must be >= 1"),
        ("banana", "unknown snippet spec 'banana'"),
        ("", "unknown snippet spec"),
        ("grid:3x3x3", "unknown snippet spec"),
    ],
)
def test_parse_errors_name_the_problem(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_snippet_spec(text)


def test_grid_boxes_by_hand_with_leftovers_dropped():
    # 10 x 7 image, 3x3 grid: tiles 3 px wide (10 // 3) and 2 px high (7 // 3);
    # the last column (x = 9) and last row (y = 6) are leftovers and dropped.
    boxes = GridSpec(3, 3).boxes(10, 7)
    assert boxes == [
        (0, 0, 3, 2), (3, 0, 6, 2), (6, 0, 9, 2),
        (0, 2, 3, 4), (3, 2, 6, 4), (6, 2, 9, 4),
        (0, 4, 3, 6), (3, 4, 6, 6), (6, 4, 9, 6),
    ]  # fmt: skip


def test_grid_rectangular():
    assert GridSpec(1, 2).boxes(4, 3) == [(0, 0, 2, 3), (2, 0, 4, 3)]


def test_patch_boxes_by_hand():
    # 5 x 4 image, 2-px patches every 2 px: x in {0, 2}, y in {0, 2}; column x = 4 dropped.
    assert PatchSpec(2, 2).boxes(5, 4) == [(0, 0, 2, 2), (2, 0, 4, 2), (0, 2, 2, 4), (2, 2, 4, 4)]
    # stride 1: x in {0..3}, y in {0..2} -> 12 overlapping patches
    assert len(PatchSpec(2, 1).boxes(5, 4)) == 12


def test_count_matches_boxes():
    for spec in (GridSpec(3, 3), GridSpec(2, 5), PatchSpec(16, 16), PatchSpec(32, 8)):
        for size in ((64, 64), (100, 37), (333, 500)):
            assert spec.count(*size) == len(spec.boxes(*size))


def test_single_snippet_specs():
    assert GridSpec(1, 1).boxes(7, 5) == [(0, 0, 7, 5)]
    assert PatchSpec(5, 5).boxes(5, 5) == [(0, 0, 5, 5)]


def test_image_too_small_errors():
    with pytest.raises(ConfigError, match="larger than the 10x10 image"):
        PatchSpec(16, 16).boxes(10, 10)
    with pytest.raises(ConfigError, match="larger than the 10x10 image"):
        PatchSpec(16, 16).count(10, 10)
    with pytest.raises(ConfigError, match="at least 3x3 pixels"):
        GridSpec(3, 3).boxes(2, 2)
    with pytest.raises(ConfigError, match="at least 3x3 pixels"):
        GridSpec(3, 3).count(2, 5)


def test_crop_snippets_gives_the_pixels_of_each_box():
    image = Image.new("RGB", (4, 2))
    for x in range(4):
        for y in range(2):
            image.putpixel((x, y), (x * 10, y * 10, 0))
    tiles = crop_snippets(image, GridSpec(1, 2))
    assert [t.size for t in tiles] == [(2, 2), (2, 2)]
    assert tiles[1].getpixel((0, 1)) == (20, 10, 0)


def test_every_registered_kind_parses_its_own_name_and_says_its_cost():
    assert list(SNIPPET_SPECS) == ["grid", "patch", "dense"]
    for text in ("grid:3x3", "patch:32/16", "patch:16", "dense:448"):
        spec = parse_snippet_spec(text)
        assert str(spec) == text and SNIPPET_SPECS[spec.kind] is type(spec)
        assert spec.form in SNIPPET_FORMS
    # Crops cost a forward each besides the global view; dense one forward in all.
    assert GridSpec(3, 3).forwards(9) == 10 and PatchSpec(16, 16).forwards(4) == 5
    assert DenseSpec(448).forwards(196) == 1 and not DenseSpec.cut_from_image
    assert DenseSpec().at(224) == DenseSpec(224) and GridSpec(3, 3).at(224) == GridSpec(3, 3)
