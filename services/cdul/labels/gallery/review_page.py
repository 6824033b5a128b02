"""The gallery's "review first" page: the labels most likely wrong, in the order of
``cdul label-queue`` (:mod:`cdul.labels.queue`), each with its image."""

from __future__ import annotations

from cdul.labels.gallery.html import INDEX, LEGEND, esc, figure, frame_width, page, threshold_text
from cdul.labels.gallery.model import Gallery


def review_page_html(gallery: Gallery) -> str:
    truth = gallery.labels.ground_truth
    parts = []
    for pair in gallery.review:
        name = gallery.labels.classes[pair.c]
        threshold = gallery.classes[pair.c].stats.threshold
        state = "labeled" if pair.label else "not labeled"
        has = None if truth is None else bool(truth[pair.row, pair.c] > 0)
        wrong = ""
        if has is not None:
            wrong = ' <span class="bad">wrong</span>' if has != pair.label else " right"
        note = (f'<br><b>{esc(name)}</b>: {state} at {threshold_text(threshold)}{wrong}'
                f'<br><span class="nums">review score {pair.review_score:.3f}</span>')  # fmt: skip
        score = float(gallery.scores[pair.row, pair.c])
        parts.append(figure(gallery.thumbs[pair.row], score, has, frame_width(gallery), note))
    body = [
        f'<nav><a href="{INDEX}">all classes</a></nav>',
        f"<h1>Review first: {len(gallery.review)} labels most likely wrong</h1>",
        f'<p class="nums">Ordered as <code>cdul label-queue</code> writes them (priority from '
        f"{esc(gallery.review_source)}); each image with the one label in question and its "
        f"{esc(gallery.config.vector)} score. Reviewed images are left out.</p>",
        LEGEND if truth is not None else "",
        f'<div class="grid">{"".join(parts)}</div>',
    ]
    return page(f"Review first: {gallery.uri}", "\n".join(body))
