"""Show the snippets a spec cuts from an image size: the forward passes it will cost."""

from __future__ import annotations

import argparse

from cdul.core.errors import ConfigError
from cdul.core.method.snippets import parse_snippet_spec


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "spec", help="grid:RxC (the paper's 3x3 = grid:3x3), patch:K[/S] or dense:SIZE"
    )
    parser.add_argument(
        "--size", default="500x375", help="image size WIDTHxHEIGHT (default: a typical VOC image)"
    )
    parser.add_argument(
        "--boxes", action="store_true", help="print every box (left top right bottom)"
    )


def run(args: argparse.Namespace) -> int:
    spec = parse_snippet_spec(args.spec)
    width, height = _parse_size(args.size)
    count = spec.count(width, height)
    forwards = spec.forwards(count)
    print(f"{spec} on a {width}x{height} image: {count} snippets, {forwards} CLIP forward passes")
    if args.boxes:
        for box in spec.boxes(width, height):
            print(*box)
    return 0


def _parse_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise ConfigError(
            f"--size must look like WIDTHxHEIGHT (e.g. 500x375), got {text!r}"
        ) from None
    return width, height
