"""``cdul label-sweep RUN``: Eq. 6-7 again for other zetas from the stored alpha/beta.

No CLIP call: a run stores alpha and beta (Eq. 5), so the aggregate and final labels
for any zeta follow from them (:func:`cdul.core.pseudo_labels.reaggregate`). With ground
truth each zeta gets the macro mAP of aggregate and final (global does not depend on
zeta); without, the share of (image, class) pairs whose alpha reaches zeta. The rows go
to ``pseudo_labels/zeta_sweep.json`` and ``.csv`` unless ``--no-store``.
"""

from __future__ import annotations

import argparse
import csv
import io
from collections.abc import Sequence

from cdul.core.errors import ConfigError
from cdul.core.evaluation import evaluate
from cdul.core.pseudo_labels import PREFIX, PseudoLabels, read_pseudo_labels, reaggregate
from cdul.core.storage import open_store

DEFAULT_ZETAS = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9)
SWEEP_JSON = f"{PREFIX}/zeta_sweep.json"
SWEEP_CSV = f"{PREFIX}/zeta_sweep.csv"


def zeta_sweep(labels: PseudoLabels, zetas: Sequence[float]) -> list[dict[str, float]]:
    truth = labels.ground_truth
    glob = None
    if truth is not None and len(labels):
        glob = evaluate(labels["global"], truth, labels.classes).mean_ap
    rows = []
    for zeta in zetas:
        vectors = reaggregate(labels, zeta)
        row = {"zeta": float(zeta), "alpha_share": float((labels["alpha"] >= zeta).float().mean())}
        if glob is not None:
            row["global_mAP"] = glob
            for name in ("aggregate", "final"):
                row[f"{name}_mAP"] = evaluate(vectors[name], truth, labels.classes).mean_ap
        rows.append(row)
    return rows


def format_rows(rows: list[dict[str, float]]) -> str:
    keys = list(rows[0])
    lines = ["  ".join(k.rjust(13) for k in keys)]
    lines += ["  ".join(f"{row[k]:13.4f}" for k in keys) for row in rows]
    return "\n".join(lines)


def parse_zetas(text: str) -> list[float]:
    try:
        zetas = [float(z) for z in text.split(",") if z.strip()]
    except ValueError:
        raise ConfigError(f"--zetas {text!r}: expected numbers separated by commas") from None
    if not zetas or not all(0.0 <= z <= 1.0 for z in zetas):
        raise ConfigError(f"--zetas {text!r}: give values in [0, 1]")
    return zetas


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="a labeled run URI (s3://... or file://...)")
    parser.add_argument(
        "--zetas",
        default=",".join(str(z) for z in DEFAULT_ZETAS),
        help="comma-separated zeta values in [0, 1] (default %(default)s)",
    )
    parser.add_argument("--no-store", action="store_true", help="print only; write nothing")


def run(args: argparse.Namespace) -> int:
    store = open_store(args.run)
    labels = read_pseudo_labels(store)
    rows = zeta_sweep(labels, parse_zetas(args.zetas))
    m = labels.manifest
    print(f"zeta sweep of {store.uri} ({m.images} images, {m.snippet_spec}, stored zeta {m.zeta}):")
    print(format_rows(rows))
    if not args.no_store:
        store.write_json(SWEEP_JSON, {"snippet_spec": m.snippet_spec, "rows": rows})
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        store.write_text(SWEEP_CSV, out.getvalue())
        print(f"stored {store.uri_for(SWEEP_JSON)} and {store.uri_for(SWEEP_CSV)}")
    return 0
