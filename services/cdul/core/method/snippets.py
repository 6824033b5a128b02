"""Snippet specifications: how an image is cut into the local views of Eq. 3-4.

Two readings of the paper's "snippet size 3x3" are supported, so that both the
paper's and the reproducibility study's tables can be redone:

``grid:RxC``
    The paper's meaning: the full-resolution image is cut into an R-row, C-column grid
    of equal, non-overlapping tiles of ``H // R`` by ``W // C`` pixels. Leftover pixels
    (the last ``W mod C`` columns and ``H mod R`` rows) are dropped, exactly as the
    study's public code does, so every tile has the same size. ``grid:3x3`` gives 9
    snippets per image whatever its resolution.

``patch:K`` or ``patch:K/S``
    The study's reading: K x K-pixel squares taken every S pixels (S defaults to K,
    i.e. non-overlapping), row by row from the top-left corner. Positions whose square
    would cross the right or bottom edge are dropped, so leftover pixels are again the
    last ``(W - K) mod S`` columns and ``(H - K) mod S`` rows.

A third kind is not cut from the image at all:

``dense`` or ``dense:SIZE``
    MaskCLIP's dense scores (Zhou et al., ECCV 2022) from a ResNet CLIP: the whole image
    is preprocessed as for the global score but at SIZE pixels (default: the model's
    input size) and encoded ONCE; every cell of the final feature map (SIZE/32 squared,
    the tower's stride is 32) passes through the attention pool's value and output
    projections, giving one embedding per cell: a "snippet" each, in row-major order
    (:mod:`cdul.core.clip_dense`). Its boxes are the cells mapped back through the
    resize and centre crop, so they cover the centre square of a non-square image only.

Each grid or patch snippet is then given to CLIP's own preprocessing (resize + centre
crop) by the caller; this module only decides the boxes. Boxes are ``(left, top, right, bottom)``
in pixels with ``right``/``bottom`` exclusive, the convention of ``PIL.Image.crop``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cdul.core.errors import ConfigError

if TYPE_CHECKING:
    from PIL import Image

Box = tuple[int, int, int, int]

#: The paper's snippets: the image cut into a 3x3 grid of crops (Sec. 3.1).
DEFAULT_SNIPPET_SPEC = "grid:3x3"
_GRID = re.compile(r"grid:(?P<rows>-?\d+)x(?P<cols>-?\d+)")
_PATCH = re.compile(r"patch:(?P<size>-?\d+)(?:/(?P<stride>-?\d+))?")
_DENSE = re.compile(r"dense(?::(?P<size>-?\d+))?")
_FORMS = (
    "'grid:RxC' (e.g. grid:3x3), 'patch:K' / 'patch:K/S' (e.g. patch:32/16) or "
    "'dense' / 'dense:SIZE' (e.g. dense:448)"
)
#: A ResNet CLIP tower's output stride: a SIZE-pixel input gives a SIZE/32 square map.
DENSE_STRIDE = 32


@dataclass(frozen=True)
class GridSpec:
    """An R x C grid of equal tiles over the full-resolution image."""

    rows: int
    cols: int

    def __str__(self) -> str:
        return f"grid:{self.rows}x{self.cols}"

    def boxes(self, width: int, height: int) -> list[Box]:
        _check_size(width, height)
        tile_w, tile_h = width // self.cols, height // self.rows
        if tile_w == 0 or tile_h == 0:
            raise ConfigError(
                f"snippet spec {self} needs an image of at least {self.cols}x{self.rows} "
                f"pixels (width x height); got {width}x{height}"
            )
        return [
            (c * tile_w, r * tile_h, (c + 1) * tile_w, (r + 1) * tile_h)
            for r in range(self.rows)
            for c in range(self.cols)
        ]


@dataclass(frozen=True)
class PatchSpec:
    """K x K-pixel squares every ``stride`` pixels."""

    size: int
    stride: int

    def __str__(self) -> str:
        if self.stride == self.size:
            return f"patch:{self.size}"
        return f"patch:{self.size}/{self.stride}"

    def boxes(self, width: int, height: int) -> list[Box]:
        _check_size(width, height)
        if self.size > width or self.size > height:
            raise ConfigError(
                f"snippet spec {self}: a {self.size}x{self.size} patch is larger than "
                f"the {width}x{height} image"
            )
        k, s = self.size, self.stride
        return [
            (left, top, left + k, top + k)
            for top in range(0, height - k + 1, s)
            for left in range(0, width - k + 1, s)
        ]


@dataclass(frozen=True)
class DenseSpec:
    """One forward of the whole image at ``size`` pixels; a snippet per feature-map cell.

    ``size`` None means the model's input size; :meth:`at` fills it in (the server
    does, from the model it serves)."""

    size: int | None = None

    def __str__(self) -> str:
        return "dense" if self.size is None else f"dense:{self.size}"

    def at(self, input_size: int) -> DenseSpec:
        return self if self.size is not None else DenseSpec(input_size)

    @property
    def side(self) -> int:
        if self.size is None:
            raise ConfigError(
                "snippet spec 'dense' means the served model's input size; give dense:SIZE"
            )
        return self.size // DENSE_STRIDE

    def boxes(self, width: int, height: int) -> list[Box]:
        """Each cell of the ``side x side`` map, mapped back through the resize of the
        shorter side to ``size`` and the centre crop (as open_clip's transform does)."""
        _check_size(width, height)
        size, side = self.size, self.side
        assert size is not None  # self.side checked it
        if height <= width:
            new_w, new_h = int(size * width / height), size
        else:
            new_w, new_h = size, int(size * height / width)
        left, top = round((new_w - size) / 2.0), round((new_h - size) / 2.0)
        sx, sy, cell = width / new_w, height / new_h, size / side
        return [
            (
                math.floor((left + c * cell) * sx),
                math.floor((top + r * cell) * sy),
                min(width, math.ceil((left + (c + 1) * cell) * sx)),
                min(height, math.ceil((top + (r + 1) * cell) * sy)),
            )
            for r in range(side)
            for c in range(side)
        ]


SnippetSpec = GridSpec | PatchSpec | DenseSpec


def parse_snippet_spec(text: str) -> SnippetSpec:
    """Parse ``grid:RxC``, ``patch:K[/S]`` or ``dense[:SIZE]``; raise ConfigError otherwise."""
    if not isinstance(text, str):
        raise ConfigError(f"snippet spec must be a string like {_FORMS}; got {text!r}")
    spec = text.strip().lower()
    if m := _GRID.fullmatch(spec):
        rows, cols = int(m["rows"]), int(m["cols"])
        if rows < 1 or cols < 1:
            raise ConfigError(
                f"snippet spec {text!r}: grid rows and columns must be >= 1, got {rows}x{cols}"
            )
        return GridSpec(rows, cols)
    if m := _PATCH.fullmatch(spec):
        size = int(m["size"])
        stride = int(m["stride"]) if m["stride"] is not None else size
        if size < 1:
            raise ConfigError(f"snippet spec {text!r}: patch size must be >= 1 pixel")
        if stride < 1:
            raise ConfigError(f"snippet spec {text!r}: patch stride must be >= 1 pixel")
        return PatchSpec(size, stride)
    if m := _DENSE.fullmatch(spec):
        if m["size"] is None:
            return DenseSpec()
        size = int(m["size"])
        if size < DENSE_STRIDE or size % DENSE_STRIDE:
            raise ConfigError(
                f"snippet spec {text!r}: SIZE must be a positive multiple of {DENSE_STRIDE} "
                "pixels (a ResNet CLIP's output stride)"
            )
        return DenseSpec(size)
    raise ConfigError(f"unknown snippet spec {text!r}: expected {_FORMS}")


def snippet_count(spec: SnippetSpec, width: int, height: int) -> int:
    """Number of snippets ``spec`` cuts from a ``width`` x ``height`` image.

    Computed without building the box list, so a server can refuse a request that
    would cut too many snippets before doing any work. Raises the same ConfigError
    as :meth:`boxes` for an image the spec cannot cut.
    """
    _check_size(width, height)
    if isinstance(spec, DenseSpec):
        return spec.side**2
    if isinstance(spec, GridSpec):
        if width < spec.cols or height < spec.rows:
            spec.boxes(width, height)  # raises the error that names the problem
        return spec.rows * spec.cols
    if spec.size > width or spec.size > height:
        spec.boxes(width, height)  # raises the error that names the problem
    per_row = (width - spec.size) // spec.stride + 1
    per_col = (height - spec.size) // spec.stride + 1
    return per_row * per_col


def crop_snippets(image: Image.Image, spec: SnippetSpec) -> list[Image.Image]:
    """Cut ``image`` into the snippets of ``spec``, in row-major order."""
    return [image.crop(box) for box in spec.boxes(*image.size)]


def _check_size(width: int, height: int) -> None:
    if width < 1 or height < 1:
        raise ConfigError(f"image size must be positive, got {width}x{height}")
