"""``cdul label-report RUN...``: one line per labeled run (the study's Table 2 layout).

For runs with ground truth it reads each merged manifest (its stored evaluation; no
recomputation) and prints snippet spec, label recipe, images and macro mAP of global /
aggregate / final side by side, then what the final labels are worth as labels: macro
and micro F1 at the run's label-free thresholds and labels per image (next to the true
count). A run without ground truth has no mAP to show, so it gets a block of its own
instead, computed from its labels: per class its threshold (the run's label-free one,
``--threshold`` or ``--thresholds FILE``), the images at or over it, the score
distribution (mean, quartiles, a text histogram) and a flag for a class that never
fires or fires on almost every image, which is usually a bad class name or template.
Those numbers are :func:`cdul.labels.stats.class_stats`, the ones ``cdul label-gallery``
shows.
"""

from __future__ import annotations

import argparse
import math

from cdul.core.errors import StorageError
from cdul.core.evaluation import format_ap
from cdul.core.pseudo_labels import LABEL_VECTORS, MANIFEST, LabelManifest, read_pseudo_labels
from cdul.core.settings import add_flags, from_args
from cdul.core.storage import open_store
from cdul.labels.stats import ClassStats, StatsConfig, class_stats, flag_text

# One character per histogram bin: blank for an empty bin, then eighths of the fullest.
BLOCKS = " ▁▂▃▄▅▆▇█"


def rows_for(runs: list[str]) -> list[dict[str, object]]:
    rows = []
    for uri in runs:
        store = open_store(uri)
        if not store.exists(MANIFEST):
            raise StorageError(f"no merged pseudo labels at {store.uri_for(MANIFEST)}")
        m = LabelManifest.from_json(store.read_json(MANIFEST))
        ev = m.evaluation or {}
        final = (ev.get("final") or {}).get("labels") or {}
        rows.append(
            {"run": uri, "snippets": m.snippet_spec, "recipe": str(m.label_recipe()),
             "images": m.images,
             **{k: (ev[k]["mAP"] if k in ev else None) for k in LABEL_VECTORS},
             "macro_f1": final.get("macro_f1"), "micro_f1": final.get("micro_f1"),
             "labels_per_image": final.get("labels_per_image"),
             "truth_per_image": final.get("truth_per_image"),
             "relabeled_from": m.provenance() if m.relabeled_from else None}
        )  # fmt: skip
    return rows


def format_rows(rows: list[dict[str, object]]) -> str:
    def cell(value: object) -> str:
        return "-" if value is None else f"{100 * float(value):.1f}"  # type: ignore[arg-type]

    def count(value: object) -> str:
        return "-" if value is None else f"{float(value):.2f}"  # type: ignore[arg-type]

    recipe = max(len("recipe"), *(len(str(r["recipe"])) for r in rows))
    lines = [f"{'snippets':<12} {'recipe':<{recipe}} {'images':>7} {'global':>7} {'aggr.':>7} "
             f"{'final':>7} {'F1':>6} {'microF1':>7} {'labels':>6} {'truth':>6}  run"]  # fmt: skip
    for r in rows:
        lines.append(
            f"{r['snippets']!s:<12} {r['recipe']!s:<{recipe}} {r['images']!s:>7} "
            f"{cell(r['global']):>7} {cell(r['aggregate']):>7} {cell(r['final']):>7} "
            f"{cell(r['macro_f1']):>6} {cell(r['micro_f1']):>7} "
            f"{count(r['labels_per_image']):>6} {count(r['truth_per_image']):>6}  {r['run']}"
        )
    lines += [f"  {r['run']}: {r['relabeled_from']}" for r in rows
              if r.get("relabeled_from")]  # sweep rows have none  # fmt: skip
    lines.append("(macro mAP in %, over the classes with a positive image; F1 (macro) and micro-F1 "
                 "in % of the final labels at the run's label-free thresholds, with labels and "
                 "true labels per image; - = none stored)")  # fmt: skip
    return "\n".join(lines)


def text_histogram(counts: tuple[int, ...]) -> str:
    """One block character per bin, the fullest bin a full block; any image shows."""
    most = max(counts, default=0)
    if not most:
        return " " * len(counts)
    top = len(BLOCKS) - 1
    return "".join(BLOCKS[max(1, round(top * n / most)) if n else 0] for n in counts)


def format_stats(stats: list[ClassStats], config: StatsConfig) -> str:
    """The per-class table of a run without ground truth."""
    number = format_ap  # three decimals, "-" when undefined (a run without images)
    width = max(len("class"), *(len(s.name) for s in stats))
    header = (f"{'class':<{width}}  {'thresh':>6}  {'labels':>6}  {'share':>6}  {'mean':>5}  "
              f"{'min':>5}  {'q1':>5}  {'median':>6}  {'q3':>5}  {'max':>5}  |0 score  1|  "
              "flag")  # fmt: skip
    lines = [header, "-" * len(header)]
    for s in stats:
        q = s.quartiles
        threshold = "never" if math.isinf(s.threshold) else f"{s.threshold:.3f}"
        lines.append(
            f"{s.name:<{width}}  {threshold:>6}  {s.fires:>6}  {100 * s.share:>5.1f}%  "
            f"{number(s.mean):>5}  {number(q[0]):>5}  {number(q[1]):>5}  {number(q[2]):>6}  "
            f"{number(q[3]):>5}  {number(q[4]):>5}  |{text_histogram(s.histogram)}|  "
            f"{flag_text(s, config.almost_all)}".rstrip()
        )
    flagged = sum(1 for s in stats if s.flag)
    per_image = sum(s.fires for s in stats) / stats[0].images if stats and stats[0].images else 0
    lines.append(
        f"(thresh: the class's decision threshold; labels: images scored at or over it, "
        f"{per_image:.2f} labels per image in all; histogram: images per tenth of the score "
        f"range; {flagged} class(es) flagged)"
    )
    return "\n".join(lines)


def stats_block(uri: str, config: StatsConfig) -> str:
    labels = read_pseudo_labels(open_store(uri))
    m = labels.manifest
    thresholds = config.thresholds_for(labels)
    head = (
        f"{uri}: {len(labels)} images, no ground truth; {m.snippet_spec}, {m.label_recipe()}; "
        f"{config.vector} pseudo labels, a class fires at >= its threshold ({thresholds.source})"
    )
    if m.provenance() is not None:
        head += f"\n{m.provenance()}"
    stats = class_stats(labels[config.vector], labels.classes, thresholds.values,
                        config.almost_all)  # fmt: skip
    return head + "\n" + format_stats(stats, config)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", help="labeled run URIs")
    add_flags(parser, StatsConfig)
    parser.epilog = (
        "A run with ground truth is a row of the mAP table; one without gets a per-class "
        "table (each class's threshold, images over it, score distribution, flags) instead."
    )


def run(args: argparse.Namespace) -> int:
    config = from_args(StatsConfig, args)
    rows = rows_for(args.runs)
    # A run without a stored evaluation would be a row of dashes: it gets its own block.
    evaluated = [r for r in rows if any(r[k] is not None for k in LABEL_VECTORS)]
    blocks = [format_rows(evaluated)] if evaluated else []
    blocks += [stats_block(str(r["run"]), config) for r in rows if r not in evaluated]
    print("\n\n".join(blocks))
    return 0
