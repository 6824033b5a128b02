"""The HTML of ``cdul label-gallery``: pure functions from a built gallery to page text.

Every page stands alone: inline CSS, inline SVG plots, relative links to its sibling
pages and ``thumbs/``, no script and no external resource, so it opens from a copied
folder without a server. Every piece of text that comes from data (class names, image
ids, the run's settings, error messages) goes through :func:`esc`.
"""

from __future__ import annotations

import math
from html import escape

from cdul.core.evaluation import format_ap
from cdul.labels.gallery.model import ClassView, Gallery, Thumb
from cdul.labels.reading import over_threshold
from cdul.labels.stats import ClassStats, flag_text

INDEX = "index.html"
REVIEW = "review.html"
STRIP = 6  # thumbnails per class on the index; the class page has the rest
STRIP_BOX = 120  # their frame width in px: six fit beside the plot in a 1280 px window
TRUE_MARK = ' <span class="ok" title="in the ground truth">&#10003;</span>'
FALSE_MARK = ' <span class="bad" title="not in the ground truth">&#10007;</span>'
LEGEND = (
    '<p class="nums">Ground truth: a green frame and <span class="ok">&#10003;</span> mark an '
    'image that has the class, a red frame and <span class="bad">&#10007;</span> one that does '
    "not; under each image, its top labels and scores.</p>"
)
NOTES_SHOWN = 50  # unreadable / skipped images listed by name before "and N more"

CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 24px 40px;
color:#1f2328;background:#f6f8fa}
h1{font-size:22px;margin:18px 0 8px;overflow-wrap:anywhere}
h2{font-size:17px;margin:22px 0 8px;overflow-wrap:anywhere}
a{color:#0969da}
table{border-collapse:collapse;background:#fff}
td,th{padding:3px 8px;border-bottom:1px solid #e5e7eb;text-align:right;vertical-align:middle}
th{background:#eef1f4;font-weight:600}
td.l,th.l{text-align:left}
table.settings td{text-align:left}
table.settings td:first-child{color:#57606a;white-space:nowrap}
tr.flagged td{background:#fff4e5}
.flag{color:#9a3412;font-weight:600}
.notes li{margin:2px 0}
section.cls{display:flex;gap:16px;align-items:flex-start;background:#fff;
border:1px solid #d0d7de;border-radius:6px;padding:10px 12px;margin:10px 0}
section.cls .about{flex:0 0 270px}
section.cls h2{margin:0 0 4px;font-size:16px}
.nums{color:#57606a;font-size:12px}
.grid{display:flex;flex-wrap:wrap;gap:10px;align-items:flex-start}
figure{margin:0;background:#fff;border:3px solid #d0d7de;border-radius:4px;padding:3px}
figure.pos{border-color:#1a7f37}
figure.neg{border-color:#cf222e}
figure img,figure .missing{display:block;max-width:100%;height:auto;margin:0 auto}
figure .missing{aspect-ratio:1;display:flex;align-items:center;justify-content:center;
text-align:center;color:#6e7781;background:#eaeef2;font-size:12px}
figcaption{font-size:11px;line-height:1.3;margin-top:3px;overflow-wrap:anywhere}
figcaption .id{font-weight:600}
figcaption ol{margin:2px 0 0;padding-left:16px}
.ok{color:#1a7f37;font-weight:600}
.bad{color:#cf222e;font-weight:600}
.plots{display:flex;gap:24px;flex-wrap:wrap;align-items:flex-end}
svg text{font:10px sans-serif;fill:#57606a}
nav{margin:12px 0}
"""


def esc(value: object) -> str:
    """Text and attribute values: every markup character escaped, quotes included."""
    return escape(str(value), quote=True)


def class_page(index: int) -> str:
    return f"class-{index:03d}.html"


def page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n{body}\n"
        "</body>\n</html>\n"
    )


def threshold_text(threshold: float) -> str:
    return "never" if math.isinf(threshold) else f"{threshold:.3g}"


def falloff_svg(stats: ClassStats, width: int, height: int) -> str:
    """The class's scores sorted high to low against their rank (log scale, see
    :attr:`ClassStats.falloff`), its threshold dashed and, where the curve crosses it,
    the number of images at or over it (a class that never fires has no line)."""
    threshold = stats.threshold
    left, bottom, top, right = 22, 14, 6, 8
    w, h = width - left - right, height - top - bottom
    decades = math.log10(stats.images) if stats.images > 1 else 1.0

    def x_of(rank: float) -> float:  # rank 1 at the left edge, rank N at the right
        return left + w * math.log10(max(rank, 1.0)) / decades

    last = max(len(stats.falloff) - 1, 1)
    points = " ".join(
        f"{left + w * k / last:.1f},{top + (1 - s) * h:.1f}" for k, s in enumerate(stats.falloff)
    )
    # Powers of ten along the rank axis, and the image count at its right end (where it
    # would crowd a power of ten, that one gives way).
    ticks = "".join(
        f'<text x="{x_of(10**j):.1f}" y="{height - 2}" text-anchor="middle">{10**j:,}</text>'
        for j in range(math.floor(decades) + 1)
        if 10**j <= stats.images and (j == 0 or x_of(10**j) < left + w - 34)
    )
    if stats.images > 1:
        ticks += f'<text x="{left + w}" y="{height - 2}" text-anchor="end">{stats.images:,}</text>'
    y_thr = top + (1 - min(threshold, 1.0)) * h
    shown = "" if math.isinf(threshold) else "1"  # the line and its value, or nothing
    parts = [
        f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{esc(stats.name)}: scores by rank">'
        f"<title>{esc(stats.name)}: scores sorted high to low against their rank (log scale) "
        f"over {stats.images} images</title>",
        f'<rect x="{left}" y="{top}" width="{w}" height="{h}" fill="#f6f8fa" stroke="#d0d7de"/>',
        f'<polyline points="{points}" fill="none" stroke="#0969da" stroke-width="1.6"/>',
        f'<line x1="{left}" x2="{left + w}" y1="{y_thr:.1f}" y2="{y_thr:.1f}" stroke="#cf222e" '
        f'stroke-dasharray="4 3" stroke-opacity="{shown or 0}"/>',
        f'<text x="{left - 3}" y="{top + 8}" text-anchor="end">1</text>',
        f'<text x="{left - 3}" y="{y_thr + 3:.1f}" text-anchor="end">'
        f"{threshold_text(threshold) if shown else ''}</text>",
        f'<text x="{left - 3}" y="{top + h}" text-anchor="end">0</text>',
        ticks,
    ]
    label = f"{stats.fires} at or over {threshold_text(threshold)}"
    if stats.fires:
        x = x_of(stats.fires)
        start = x < left + 0.6 * w
        parts.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{top + h}" stroke="#8c959f" '
            f'stroke-dasharray="2 2"/><text x="{x + (4 if start else -4):.1f}" y="{top + 10}" '
            f'text-anchor="{"start" if start else "end"}">{esc(label)}</text>'
        )
    else:
        none = "never fires" if math.isinf(threshold) else f"none at or over {threshold:.3g}"
        parts.append(f'<text x="{left + w - 4}" y="{top + 10}" text-anchor="end">{none}</text>')
    return "".join(parts) + "</svg>"


def histogram_svg(stats: ClassStats, width: int, height: int) -> str:
    """Images per score bin over [0, 1], square-root heights (counts in the tooltips)."""
    bins = len(stats.histogram)
    # Square-root heights: most images score near 0 for most classes, and a linear scale
    # would leave the other bins invisible next to that one.
    most = math.sqrt(max(stats.histogram, default=0)) or 1.0
    bar = width / bins
    bars = []
    for k, count in enumerate(stats.histogram):
        tall = (height - 12) * math.sqrt(count) / most
        bars.append(
            f'<rect x="{k * bar + 0.5:.1f}" y="{height - 12 - tall:.1f}" width="{bar - 1:.1f}" '
            f'height="{tall:.1f}" fill="#54aeff"><title>{k / bins:.1f}-{(k + 1) / bins:.1f}: '
            f"{count}</title></rect>"
        )
    return (
        f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{esc(stats.name)}: score histogram">{"".join(bars)}'
        f'<text x="0" y="{height - 1}">0</text>'
        f'<text x="{width}" y="{height - 1}" text-anchor="end">1</text></svg>'
    )


def figure(thumb: Thumb, score: float, truth: bool | None, box: int, note: str = "") -> str:
    """One image in a ``box`` px wide frame: thumbnail or placeholder, its id, this
    class's score (marked against the ground truth when there is one), its top labels."""
    kind = "" if truth is None else (' class="pos"' if truth else ' class="neg"')
    if thumb.file:
        w, h = _fit(thumb.size, box)
        picture = (
            f'<img src="{esc(thumb.file)}" width="{w}" height="{h}" alt="{esc(thumb.image_id)}">'
        )
    else:
        picture = (
            f'<div class="missing" style="width:{box}px" title="{esc(thumb.problem)}">'
            "image could not be read</div>"
        )
    mark = ""
    if truth is not None:
        mark = TRUE_MARK if truth else FALSE_MARK
    tops = "".join(
        f"<li>{esc(label.name)} {label.score:.2f}" + (TRUE_MARK if label.truth else "") + "</li>"
        for label in thumb.top
    )
    return (
        f'<figure{kind} style="width:{box}px">{picture}<figcaption>'
        f'<div class="id">{esc(thumb.image_id)}</div><div>score {score:.3f}{mark}{note}</div>'
        f"<ol>{tops}</ol></figcaption></figure>"
    )


def grid(gallery: Gallery, c: int, rows: list[int], errors: bool = False) -> str:
    truth = gallery.labels.ground_truth
    threshold = gallery.classes[c].stats.threshold
    parts = []
    for row in rows:
        score = float(gallery.scores[row, c])
        has = None if truth is None else bool(truth[row, c] > 0)
        note = ""
        if errors:  # whether the error is one at this threshold, too
            labeled = bool(over_threshold(gallery.scores[row : row + 1, c : c + 1], threshold))
            wrong = labeled != bool(has)
            text = "labeled" if labeled else ("missed" if has else "not labeled")
            at = threshold_text(threshold)
            note = f'<br><span class="{"bad" if wrong else "nums"}">{text} at {at}</span>'
        parts.append(figure(gallery.thumbs[row], score, has, frame_width(gallery), note))
    return f'<div class="grid">{"".join(parts)}</div>'


def frame_width(gallery: Gallery) -> int:
    """The widest thumbnail made (images smaller than --thumb-size are not scaled up), but
    at least the index's frame: narrower, the captions wrap after every word."""
    sides = [max(t.size) for t in gallery.thumbs.values() if t.file]
    return max(max(sides, default=gallery.config.thumb_size), STRIP_BOX)


def stats_line(view: ClassView) -> str:
    s = view.stats
    q = s.quartiles
    text = (
        f"{s.fires} of {s.images} at or over its threshold {threshold_text(s.threshold)} "
        f"({100 * s.share:.1f}%); "
        f"mean {format_ap(s.mean)}, quartiles " + " / ".join(format_ap(v) for v in q[1:4])
    )
    if view.ap is not None:
        text += f"; AP {format_ap(view.ap)} ({view.positives} with the class)"
    return esc(text)


def settings_table(gallery: Gallery) -> str:
    rows = "".join(f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in gallery.settings())
    return f'<table class="settings">{rows}</table>'


def notes(gallery: Gallery) -> str:
    items = [
        f'<li><span class="flag">{esc(v.stats.name)}</span>: '
        f"{esc(flag_text(v.stats, gallery.config.almost_all))}</li>"
        for v in gallery.classes
        if v.stats.flag
    ]
    if gallery.dataset_problem:
        items.append(f'<li class="bad">{esc(gallery.dataset_problem)}</li>')
    unreadable = [t for t in gallery.thumbs.values() if t.problem]
    if unreadable and not gallery.dataset_problem:
        items.append(
            f"<li>{len(unreadable)} image(s) could not be read and show a placeholder:</li>"
        )
        items += [f"<li>{esc(t.image_id)}: {esc(t.problem)}</li>" for t in unreadable[:NOTES_SHOWN]]
    skipped = gallery.labels.manifest.skipped
    if skipped:
        items.append(f"<li>{len(skipped)} image(s) were skipped by the labeler (no labels):</li>")
        items += [
            f"<li>{esc(s.get('image_id', ''))}: {esc(s.get('reason', ''))}</li>"
            for s in skipped[:NOTES_SHOWN]
        ]
    hidden = max(len(unreadable) - NOTES_SHOWN, 0) + max(len(skipped) - NOTES_SHOWN, 0)
    if hidden:
        items.append(f"<li>and {hidden} more</li>")
    return f'<h2>Notes</h2><ul class="notes">{"".join(items)}</ul>' if items else ""


def classes_table(gallery: Gallery) -> str:
    with_truth = gallery.evaluation is not None
    head = ["class", "threshold", "labels", "share", "mean", "min", "q1", "median", "q3", "max",
            "histogram 0-1"]  # fmt: skip
    if with_truth:
        head += ["AP", "with class"]
    head.append("flag")
    cells = "".join(f'<th class="{"l" if h in ("class", "flag") else ""}">{h}</th>' for h in head)
    rows = []
    for c, view in enumerate(gallery.classes):
        s = view.stats
        row = [f'<td class="l"><a href="{class_page(c)}">{esc(s.name)}</a></td>',
               f"<td>{threshold_text(s.threshold)}</td>", f"<td>{s.fires}</td>",
               f"<td>{100 * s.share:.1f}%</td>",
               f"<td>{format_ap(s.mean)}</td>",
               *(f"<td>{format_ap(q)}</td>" for q in s.quartiles),
               f"<td>{histogram_svg(s, 80, 24)}</td>"]  # fmt: skip
        if with_truth:
            row += [f"<td>{format_ap(view.ap)}</td>", f"<td>{view.positives}</td>"]
        row.append(f'<td class="l flag">{esc(s.flag or "")}</td>')
        flagged = ' class="flagged"' if s.flag else ""
        rows.append(f"<tr{flagged}>{''.join(row)}</tr>")
    return f"<table><tr>{cells}</tr>{''.join(rows)}</table>"


def class_section(gallery: Gallery, c: int) -> str:
    view = gallery.classes[c]
    s = view.stats
    flag = f' <span class="flag">{esc(s.flag)}</span>' if s.flag else ""
    strip = []
    truth = gallery.labels.ground_truth
    for row in view.top[:STRIP]:
        has = None if truth is None else bool(truth[row, c] > 0)
        strip.append(figure(gallery.thumbs[row], float(gallery.scores[row, c]), has, STRIP_BOX))
    return (
        f'<section class="cls" id="c{c}"><div class="about">'
        f'<h2><a href="{class_page(c)}">{esc(s.name)}</a>{flag}</h2>'
        f'<div class="nums">{stats_line(view)}</div>'
        f"{falloff_svg(s, 260, 92)}</div>"
        f'<div class="grid">{"".join(strip)}</div></section>'
    )


def _fit(size: tuple[int, int], longest: int) -> tuple[int, int]:
    """``size`` scaled down (never up) so that its longest side is at most ``longest``."""
    scale = min(1.0, longest / max(size))
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def index_page(gallery: Gallery) -> str:
    truth = "with ground truth" if gallery.evaluation is not None else "no ground truth"
    body = [
        f"<h1>Pseudo labels: {esc(gallery.uri)}</h1>",
        f'<p class="nums">{len(gallery.labels)} images, {len(gallery.classes)} classes, '
        f"{truth}. Click a class for its images"
        + (", its worst false positives and negatives" if gallery.evaluation else "")
        + ".</p>",
        settings_table(gallery),
        (
            f'<p><a href="{REVIEW}">Review first: the {len(gallery.review)} labels most likely '
            "wrong</a> (the review queue; no ground truth used)</p>"
        )
        if gallery.review
        else "",
        notes(gallery),
        LEGEND if gallery.evaluation is not None else "",
        "<h2>Classes</h2>",
        classes_table(gallery),
        f"<h2>Highest-scored images per class ({gallery.config.vector})</h2>",
        *(class_section(gallery, c) for c in range(len(gallery.classes))),
    ]
    return page(f"Pseudo labels: {gallery.uri}", "\n".join(body))


def class_page_html(gallery: Gallery, c: int) -> str:
    view = gallery.classes[c]
    s, name = view.stats, esc(view.stats.name)
    cfg = gallery.config
    links = [f'<a href="{INDEX}">all classes</a>']
    if c > 0:
        links.insert(
            0, f'<a href="{class_page(c - 1)}">&larr; {esc(gallery.classes[c - 1].stats.name)}</a>'
        )
    if c + 1 < len(gallery.classes):
        links.append(
            f'<a href="{class_page(c + 1)}">{esc(gallery.classes[c + 1].stats.name)} &rarr;</a>'
        )
    flag = ""
    if s.flag:
        flag = f'<p class="flag">{esc(flag_text(s, cfg.almost_all))}</p>'
    body = [
        f"<nav>{' | '.join(links)}</nav>",
        f"<h1>{name}</h1>",
        f"<p>{stats_line(view)}</p>",
        flag,
        f'<div class="plots"><div>{falloff_svg(s, 520, 180)}'
        '<div class="nums">scores sorted high to low, by rank (log scale)</div></div>'
        f"<div>{histogram_svg(s, 240, 120)}"
        '<div class="nums">images per score bin (square-root heights)</div></div></div>',
        f"<h2>Highest {esc(cfg.vector)} scores for {name} ({len(view.top)} of {s.images})</h2>",
        LEGEND if gallery.evaluation is not None else "",
        grid(gallery, c, view.top),
    ]
    if gallery.evaluation is not None:
        body += [
            f"<h2>Worst false positives: the highest-scored images without {name}</h2>",
            grid(gallery, c, view.false_positives, errors=True)
            if view.false_positives else "<p>none: every image has the class</p>",
            f"<h2>Worst false negatives: the lowest-scored images with {name}</h2>",
            grid(gallery, c, view.false_negatives, errors=True)
            if view.false_negatives else "<p>none: no image has the class</p>",
        ]  # fmt: skip
    return page(f"{s.name}: pseudo labels", "\n".join(body))


def render_pages(gallery: Gallery) -> dict[str, str]:
    """File name (relative to the output directory) -> page text."""
    pages = {INDEX: index_page(gallery)}
    for c in range(len(gallery.classes)):
        pages[class_page(c)] = class_page_html(gallery, c)
    return pages
