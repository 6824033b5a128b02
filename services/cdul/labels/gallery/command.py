"""``cdul label-gallery RUN -o DIR``: a run's pseudo labels as a static HTML gallery
(:mod:`.model` builds it, :mod:`.html` renders its pages)."""

from __future__ import annotations

import argparse
from pathlib import Path

from cdul.core.settings import add_flags, from_args
from cdul.labels.gallery.html import REVIEW, render_pages
from cdul.labels.gallery.model import Gallery, GalleryConfig, build_gallery
from cdul.labels.gallery.review_page import review_page_html


def write_gallery(config: GalleryConfig) -> tuple[Gallery, list[Path]]:
    """Build the gallery and write its pages; return it and the pages written."""
    config.output.mkdir(parents=True, exist_ok=True)
    gallery = build_gallery(config)
    written = []
    pages = render_pages(gallery)
    if gallery.review:
        pages[REVIEW] = review_page_html(gallery)
    for name, text in pages.items():
        path = config.output / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return gallery, written


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="a labeled run URI (s3://... or file://...)")
    parser.add_argument("-o", "--output", required=True, help="directory to write the pages to")
    add_flags(parser, GalleryConfig)


def run(args: argparse.Namespace) -> int:
    config = from_args(GalleryConfig, args, run=args.run, output=Path(args.output))
    gallery, pages = write_gallery(config)
    made = [t for t in gallery.thumbs.values() if t.file]
    size = sum(p.stat().st_size for p in pages)
    print(
        f"{pages[0]}: {len(gallery.classes)} classes, {len(pages)} pages ({size / 1024:.0f} KiB), "
        f"{len(made)} thumbnails of {len(gallery.labels)} images"
    )
    unreadable = len(gallery.thumbs) - len(made)
    if gallery.dataset_problem:
        print(f"note: {gallery.dataset_problem}")
    elif unreadable:
        print(f"note: {unreadable} image(s) could not be read; they show a placeholder")
    return 0
