"""``cdul label-report RUN...``: one line per labeled run (the study's Table 2 layout).

Reads each run's merged manifest (its stored evaluation; no recomputation) and prints
snippet spec, zeta, images and macro mAP of global / aggregate / final side by side.
"""

from __future__ import annotations

import argparse

from cdul.core.errors import StorageError
from cdul.core.pseudo_labels import MANIFEST, LabelManifest
from cdul.core.storage import open_store


def rows_for(runs: list[str]) -> list[dict[str, object]]:
    rows = []
    for uri in runs:
        store = open_store(uri)
        if not store.exists(MANIFEST):
            raise StorageError(f"no merged pseudo labels at {store.uri_for(MANIFEST)}")
        m = LabelManifest.from_json(store.read_json(MANIFEST))
        ev = m.evaluation or {}
        rows.append(
            {"run": uri, "snippets": m.snippet_spec, "zeta": m.zeta, "images": m.images,
             **{k: (ev[k]["mAP"] if k in ev else None) for k in ("global", "aggregate", "final")}}
        )  # fmt: skip
    return rows


def format_rows(rows: list[dict[str, object]]) -> str:
    def cell(value: object) -> str:
        return "-" if value is None else f"{100 * float(value):.1f}"  # type: ignore[arg-type]

    lines = [f"{'snippets':<12} {'zeta':>5} {'images':>7} {'global':>7} {'aggr.':>7} "
             f"{'final':>7}  run"]  # fmt: skip
    for r in rows:
        lines.append(
            f"{r['snippets']!s:<12} {r['zeta']!s:>5} {r['images']!s:>7} {cell(r['global']):>7} "
            f"{cell(r['aggregate']):>7} {cell(r['final']):>7}  {r['run']}"
        )
    lines.append("(macro mAP in %, over the classes with a positive image; - = none stored)")
    return "\n".join(lines)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", help="labeled run URIs")


def run(args: argparse.Namespace) -> int:
    print(format_rows(rows_for(args.runs)))
    return 0
