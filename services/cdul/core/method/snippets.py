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

The kinds are a registry (:data:`SNIPPET_SPECS`): a kind is one :class:`SnippetSpec`
subclass that parses its own argument and says what it costs (:meth:`~SnippetSpec.count`,
:meth:`~SnippetSpec.forwards`) and whether its snippets are crops CLIP encodes one by
one (``cut_from_image``); help texts list the registry's forms.
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from cdul.core.errors import ConfigError

if TYPE_CHECKING:
    from PIL import Image

Box = tuple[int, int, int, int]

#: The paper's snippets: the image cut into a 3x3 grid of crops (Sec. 3.1).
DEFAULT_SNIPPET_SPEC = "grid:3x3"
#: A ResNet CLIP tower's output stride: a SIZE-pixel input gives a SIZE/32 square map.
DENSE_STRIDE = 32


class SnippetSpec(ABC):
    """How an image is cut into snippets: one subclass per kind (``grid``, ...)."""

    kind: ClassVar[str]
    """The spec's prefix, ``kind[:ARGUMENT]``."""
    form: ClassVar[str]
    """The accepted spellings, for help texts and errors."""
    cut_from_image: ClassVar[bool] = True
    """Snippets are crops of the image, each encoded by CLIP on its own (so an image
    costs 1 + count forwards); False: one forward of the whole image gives them all."""

    @classmethod
    @abstractmethod
    def parse(cls, argument: str | None, text: str) -> SnippetSpec | None:
        """The spec of ``kind:ARGUMENT`` (``argument`` None: ``kind`` alone); None when
        the argument is not of this kind's form; ConfigError for a bad value in it."""

    @abstractmethod
    def boxes(self, width: int, height: int) -> list[Box]:
        """The snippets' boxes on a ``width`` x ``height`` image, in row-major order."""

    def count(self, width: int, height: int) -> int:
        """Number of snippets on a ``width`` x ``height`` image, computed without building
        the box list (a server refuses a request that would cut too many before any
        work); raises the same ConfigError as :meth:`boxes` for an image it cannot cut."""
        return len(self.boxes(width, height))

    def forwards(self, count: int) -> int:
        """CLIP forward passes for an image with ``count`` snippets (the global view's
        included)."""
        return 1 + count if self.cut_from_image else 1

    def at(self, input_size: int) -> SnippetSpec:
        """This spec for a model whose input is ``input_size`` pixels (the server fills in
        what depends on the model it serves)."""
        return self

    @property
    def view_size(self) -> int | None:
        """Snippets not cut from the image: the side the whole image is encoded at (None:
        the model's input size)."""
        return None


@dataclass(frozen=True)
class GridSpec(SnippetSpec):
    """An R x C grid of equal tiles over the full-resolution image."""

    kind: ClassVar[str] = "grid"
    form: ClassVar[str] = "'grid:RxC' (e.g. grid:3x3)"
    _ARGUMENT: ClassVar[re.Pattern[str]] = re.compile(r"(?P<rows>-?\d+)x(?P<cols>-?\d+)")

    rows: int
    cols: int

    def __str__(self) -> str:
        return f"grid:{self.rows}x{self.cols}"

    @classmethod
    def parse(cls, argument: str | None, text: str) -> GridSpec | None:
        m = cls._ARGUMENT.fullmatch(argument or "")
        if m is None:
            return None
        rows, cols = int(m["rows"]), int(m["cols"])
        if rows < 1 or cols < 1:
            raise ConfigError(
                f"snippet spec {text!r}: grid rows and columns must be >= 1, got {rows}x{cols}"
            )
        return cls(rows, cols)

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

    def count(self, width: int, height: int) -> int:
        _check_size(width, height)
        if width < self.cols or height < self.rows:
            self.boxes(width, height)  # raises the error that names the problem
        return self.rows * self.cols


@dataclass(frozen=True)
class PatchSpec(SnippetSpec):
    """K x K-pixel squares every ``stride`` pixels."""

    kind: ClassVar[str] = "patch"
    form: ClassVar[str] = "'patch:K' / 'patch:K/S' (e.g. patch:32/16)"
    _ARGUMENT: ClassVar[re.Pattern[str]] = re.compile(r"(?P<size>-?\d+)(?:/(?P<stride>-?\d+))?")

    size: int
    stride: int

    def __str__(self) -> str:
        if self.stride == self.size:
            return f"patch:{self.size}"
        return f"patch:{self.size}/{self.stride}"

    @classmethod
    def parse(cls, argument: str | None, text: str) -> PatchSpec | None:
        m = cls._ARGUMENT.fullmatch(argument or "")
        if m is None:
            return None
        size = int(m["size"])
        stride = int(m["stride"]) if m["stride"] is not None else size
        if size < 1:
            raise ConfigError(f"snippet spec {text!r}: patch size must be >= 1 pixel")
        if stride < 1:
            raise ConfigError(f"snippet spec {text!r}: patch stride must be >= 1 pixel")
        return cls(size, stride)

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

    def count(self, width: int, height: int) -> int:
        _check_size(width, height)
        if self.size > width or self.size > height:
            self.boxes(width, height)  # raises the error that names the problem
        per_row = (width - self.size) // self.stride + 1
        per_col = (height - self.size) // self.stride + 1
        return per_row * per_col


@dataclass(frozen=True)
class DenseSpec(SnippetSpec):
    """One forward of the whole image at ``size`` pixels; a snippet per feature-map cell.

    ``size`` None means the model's input size; :meth:`at` fills it in (the server
    does, from the model it serves)."""

    kind: ClassVar[str] = "dense"
    form: ClassVar[str] = "'dense' / 'dense:SIZE' (e.g. dense:448)"
    cut_from_image: ClassVar[bool] = False
    _ARGUMENT: ClassVar[re.Pattern[str]] = re.compile(r"-?\d+")

    size: int | None = None

    def __str__(self) -> str:
        return "dense" if self.size is None else f"dense:{self.size}"

    @classmethod
    def parse(cls, argument: str | None, text: str) -> DenseSpec | None:
        if argument is None:
            return cls()
        if not cls._ARGUMENT.fullmatch(argument):
            return None
        size = int(argument)
        if size < DENSE_STRIDE or size % DENSE_STRIDE:
            raise ConfigError(
                f"snippet spec {text!r}: SIZE must be a positive multiple of {DENSE_STRIDE} "
                "pixels (a ResNet CLIP's output stride)"
            )
        return cls(size)

    def at(self, input_size: int) -> DenseSpec:
        return self if self.size is not None else DenseSpec(input_size)

    @property
    def view_size(self) -> int | None:
        return self.size

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

    def count(self, width: int, height: int) -> int:
        _check_size(width, height)
        return self.side**2


#: The registry: kind -> its class. A new kind is one class and one entry here.
SNIPPET_SPECS: dict[str, type[SnippetSpec]] = {
    spec.kind: spec for spec in (GridSpec, PatchSpec, DenseSpec)
}
#: The accepted spellings, for help texts and errors.
_FORMS = [spec.form for spec in SNIPPET_SPECS.values()]
SNIPPET_FORMS = ", ".join(_FORMS[:-1]) + " or " + _FORMS[-1] if len(_FORMS) > 1 else _FORMS[0]


def parse_snippet_spec(text: str) -> SnippetSpec:
    """Parse ``kind[:ARGUMENT]`` by the registry; raise ConfigError otherwise."""
    if not isinstance(text, str):
        raise ConfigError(f"snippet spec must be a string like {SNIPPET_FORMS}; got {text!r}")
    kind, sep, argument = text.strip().lower().partition(":")
    spec_class = SNIPPET_SPECS.get(kind)
    spec = spec_class.parse(argument if sep else None, text) if spec_class else None
    if spec is None:
        raise ConfigError(f"unknown snippet spec {text!r}: expected {SNIPPET_FORMS}")
    return spec


def crop_snippets(image: Image.Image, spec: SnippetSpec) -> list[Image.Image]:
    """Cut ``image`` into the snippets of ``spec``, in row-major order."""
    return [image.crop(box) for box in spec.boxes(*image.size)]


def _check_size(width: int, height: int) -> None:
    if width < 1 or height < 1:
        raise ConfigError(f"image size must be positive, got {width}x{height}")
