"""The benchmarks' results files: ``--results FILE.csv``, one row per measured mode.

As timm's benchmark.py writes its results: each row holds the run's settings, the mode,
its measured numbers and the ratio the script reports. Committed examples live in
``benchmarks/results/``, named by what was measured, the hardware and the precision
(e.g. ``clip_service_h200_bf16_fp32.csv``).
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Mapping, Sequence
from pathlib import Path


def add_results_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--results FILE.csv`` (off by default: the script only prints)."""
    parser.add_argument(
        "--results",
        type=Path,
        default=None,
        metavar="FILE.csv",
        help="also write the results as CSV, one row per measured mode",
    )


def write_results(path: Path | None, rows: Sequence[Mapping[str, object]]) -> None:
    """Write ``rows`` (the same keys in each) to ``path`` as CSV; nothing when ``path`` is None."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"results: {path}")
