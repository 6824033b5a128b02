"""``cdul label-sweep RUN``: other label recipes from what the run stores, no CLIP call.

Every combination of ``--aggregations`` (``paper`` once per ``--zetas`` value),
``--global-weights`` and ``--debias`` is recomputed (:func:`cdul.labels.reading.relabel`):
``paper`` and ``max`` from the stored alpha/beta, ``mean`` and ``topk:K`` from the
stored cosines (a run labeled with ``--no-store-cosines`` skips them, saying so). With
ground truth each recipe gets the macro mAP of aggregate and final and the macro and
micro F1 of its final labels at label-free thresholds (the rule runs are read with,
recomputed on the recipe's scores) beside the ceiling (per-class thresholds chosen with
the ground truth); the best by mAP and by F1 are named. Every recipe gets its labels
per image and the classes never labeled. Prompt templates and snippet specs change what
CLIP computes: they need a new ``cdul label`` run (compare runs with ``cdul
label-report``). The rows go to ``pseudo_labels/recipe_sweep.json`` and ``.csv`` unless
``--no-store``.
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from cdul.core.errors import ConfigError
from cdul.core.evaluation import evaluate, label_f1
from cdul.core.method.aggregation import DEFAULT_ZETA
from cdul.core.method.recipes import AGGREGATION_FORMS, DEBIAS, PAPER, LabelRecipe
from cdul.core.method.thresholds import DEFAULT_RULE, calibrated
from cdul.core.pseudo_labels import PREFIX, PseudoLabels, read_pseudo_labels
from cdul.core.settings import add_flags, flag_name, from_args, setting
from cdul.core.storage import open_store
from cdul.labels.reading import label_free_thresholds, over_threshold, relabel

DEFAULT_AGGREGATIONS = (PAPER, "max", "mean", "topk:2", "topk:3")
DEFAULT_ZETAS = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9)
DEFAULT_GLOBAL_WEIGHTS = (0.5, 0.25, 0.0)
SWEEP_JSON = f"{PREFIX}/recipe_sweep.json"
SWEEP_CSV = f"{PREFIX}/recipe_sweep.csv"
KEYS = ("aggregation", "zeta", "global_weight", "debias")


def recipes(
    aggregations: Sequence[str],
    zetas: Sequence[float],
    global_weights: Sequence[float],
    debias: Sequence[str],
) -> list[LabelRecipe]:
    """The grid, ``paper`` once per zeta (the others do not read zeta)."""
    rules = [(a, z) for a in aggregations for z in (zetas if a == PAPER else [DEFAULT_ZETA])]
    return [
        LabelRecipe(rule, zeta, weight, mode)
        for (rule, zeta), weight, mode in itertools.product(rules, global_weights, debias)
    ]


def sweep(labels: PseudoLabels, grid: Sequence[LabelRecipe]) -> tuple[list[dict], list[str]]:
    """One row per recipe the run can recompute; the recipes it cannot, by name."""
    truth = labels.ground_truth if len(labels) else None
    rows, skipped = [], []
    for recipe in grid:
        if recipe.needs_snippets and labels.cosines is None:
            skipped.append(str(recipe))
            continue
        vectors = relabel(labels, recipe)
        row: dict[str, object] = dict(recipe.to_json())
        if recipe.aggregation != PAPER:
            row["zeta"] = ""
        # The labels a user gets: each class at its label-free threshold (the rule runs
        # are read with), recomputed on this recipe's final scores.
        final = vectors["final"]
        over = torch.from_numpy(over_threshold(final, label_free_thresholds(final)))
        if truth is not None:
            for name in ("aggregate", "final"):
                row[f"{name}_mAP"] = evaluate(vectors[name], truth, labels.classes).mean_ap
            # F1: mAP ranks within a class, so it cannot see a per-class rescaling such
            # as debiasing, nor how well a label-free threshold separates the class.
            f1 = label_f1(over, truth, labels.classes)
            best = torch.from_numpy(over_threshold(final, calibrated(final, truth)))
            row["final_F1"] = f1.macro_f1
            row["final_microF1"] = f1.micro_f1
            row["ceiling_F1"] = label_f1(best, truth, labels.classes).macro_f1
        row["labels_per_image"] = float(over.sum(dim=1).float().mean()) if len(labels) else 0.0
        row["classes_never_labeled"] = int((~over.any(dim=0)).sum()) if len(labels) else 0
        rows.append(row)
    return rows, skipped


def format_rows(rows: list[dict]) -> str:
    keys = list(rows[0])
    width = {k: max(len(k), 12) for k in keys}

    def cell(value: object, key: str) -> str:
        text = f"{value:.4f}" if isinstance(value, float) else str(value)
        return text.rjust(width[key])

    lines = ["  ".join(k.rjust(width[k]) for k in keys)]
    lines += ["  ".join(cell(row[k], k) for k in keys) for row in rows]
    return "\n".join(lines)


def _numbers(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected numbers separated by commas"
        ) from None


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


@dataclass(frozen=True, kw_only=True)
class SweepConfig:
    """``cdul label-sweep``: the run and the grid of recipes recomputed from it."""

    run: str
    aggregations: tuple[str, ...] = setting(
        DEFAULT_AGGREGATIONS, f"{AGGREGATION_FORMS}, comma-separated", type=_names
    )
    zetas: tuple[float, ...] = setting(
        DEFAULT_ZETAS, "zeta values in [0, 1] for the paper's rule", type=_numbers
    )
    global_weights: tuple[float, ...] = setting(
        DEFAULT_GLOBAL_WEIGHTS, "weights of the global score in [0, 1]", type=_numbers
    )
    debias: tuple[str, ...] = setting(DEBIAS, "none and/or class-mean", type=_names)
    store: bool = setting(True, "print only; write nothing")

    def __post_init__(self) -> None:
        for name in ("zetas", "global_weights"):
            values = getattr(self, name)
            if not values or not all(0.0 <= v <= 1.0 for v in values):
                shown = ",".join(f"{v:g}" for v in values)
                flag = flag_name(SweepConfig, name)
                raise ConfigError(f"{flag} {shown!r}: give values in [0, 1]")
        for name in ("aggregations", "debias"):
            if not getattr(self, name):
                raise ConfigError(f"{flag_name(SweepConfig, name)}: give at least one")

    def grid(self) -> list[LabelRecipe]:
        return recipes(self.aggregations, self.zetas, self.global_weights, self.debias)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="a labeled run URI (s3://... or file://...)")
    add_flags(parser, SweepConfig)


def run(args: argparse.Namespace) -> int:
    config = from_args(SweepConfig, args, run=args.run)
    grid = config.grid()
    store = open_store(config.run)
    labels = read_pseudo_labels(store, cosines=any(r.needs_snippets for r in grid))
    rows, skipped = sweep(labels, grid)
    m = labels.manifest
    print(f"label recipes on {store.uri} ({m.images} images, {m.snippet_spec}, "
          f"labeled with {m.label_recipe()}):")  # fmt: skip
    if skipped:
        print(f"skipped (the run stores no cosines; relabel without --no-store-cosines): "
              f"{', '.join(skipped)}")  # fmt: skip
    if not rows:
        raise ConfigError("no recipe of the sweep can be recomputed from this run")
    print(format_rows(rows))
    if "final_mAP" in rows[0]:
        for key, what in (
            ("final_mAP", "final mAP"),
            ("final_F1", f"final macro-F1 ({DEFAULT_RULE} thresholds)"),
        ):
            best = max(rows, key=lambda row: row[key])
            flags = " ".join(f"--{k.replace('_', '-')} {best[k]}" for k in KEYS if best[k] != "")
            print(f"best {what} {best[key]:.4f}: {flags}")
    if config.store:
        store.write_json(SWEEP_JSON, {"snippet_spec": m.snippet_spec, "rows": rows,
                                      "skipped": skipped})  # fmt: skip
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        store.write_text(SWEEP_CSV, out.getvalue())
        print(f"stored {store.uri_for(SWEEP_JSON)} and {store.uri_for(SWEEP_CSV)}")
    return 0
