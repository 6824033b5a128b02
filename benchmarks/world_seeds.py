"""The embedded world's models across seeds: does every seed's tiny CLIP train well?

For each seed: train (or reuse from the cache) the tiny CLIP of ``TinyClipRecipe(seed)``,
read its final training loss (EMA, from the cache's summary), then score the held-out
scenes of that seed's world in-process (``ClipScorer``, ``--snippets``, the default label
recipe) and report the pseudo-label mAP of the global (Eq. 2) and final (Eq. 7) labels.
The summary compares each seed with the median: the worst seed's final mAP as a share
of the median's, and each loss's excess over the median's.

    .venv/bin/python benchmarks/world_seeds.py --seeds 0-9,11 \\
        --results benchmarks/results/world_seeds_cpu_fp32.csv
    # a recipe other than the default (here the live-residual one):
    .venv/bin/python benchmarks/world_seeds.py --recipe zero_init_residual=false \\
        lr=1e-3 warmup_steps=100 steps=800 --results ...
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import fields, replace
from pathlib import Path

from results_file import add_results_option, write_results

from cdul.core.clip_models import create_clip
from cdul.core.clip_scoring import ClipScorer
from cdul.core.datasets import open_dataset
from cdul.core.evaluation import evaluate
from cdul.core.label_set import LabelSet
from cdul.core.method.recipes import DEFAULT_RECIPE
from cdul.core.method.snippets import parse_snippet_spec
from cdul.world import cache
from cdul.world.generator import PROMPT_TEMPLATE, write_voc_world
from cdul.world.tiny_clip import MODEL_NAME, TinyClipRecipe, checkpoint_path, ensure_tiny_clip


def parse_seeds(text: str) -> list[int]:
    seeds: list[int] = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        seeds += list(range(int(low), int(high or low) + 1))
    return seeds


def parse_recipe(pairs: list[str]) -> TinyClipRecipe:
    """``FIELD=VALUE`` pairs over the default recipe, each value as its field's type."""
    types = {f.name: type(getattr(TinyClipRecipe(), f.name)) for f in fields(TinyClipRecipe)}
    changes: dict[str, object] = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        if name not in types or name == "seed":
            raise SystemExit(f"--recipe: {name!r} is not a TinyClipRecipe field (or is seed)")
        kind = types[name]
        changes[name] = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
    return replace(TinyClipRecipe(), **changes)


def seed_row(seed: int, args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    recipe = replace(args.recipe, seed=seed)
    checkpoint = ensure_tiny_clip(recipe, args.cache_dir, progress=False)
    trained_s = time.perf_counter() - started
    summary = cache.load_summary(checkpoint_path(recipe, args.cache_dir)) or {}
    world = args.workdir / f"world-s{seed}-{args.scenes}"
    if not (world / "ImageSets" / "Main" / "val.txt").is_file():
        write_voc_world(world, seed=seed, train=0, val=args.scenes, progress=False)
    dataset = open_dataset(f"voc:{world}:val")
    scorer = ClipScorer(create_clip(MODEL_NAME, str(checkpoint)))
    images = [dataset.load(i).image for i in range(len(dataset))]
    scores = scorer.score(images, LabelSet(tuple(dataset.classes), PROMPT_TEMPLATE),
                          parse_snippet_spec(args.snippets), zeta=DEFAULT_RECIPE.zeta)  # fmt: skip
    final = DEFAULT_RECIPE.apply(scores.global_scores, scores.alpha, scores.beta)["final"]
    truth, classes = dataset.ground_truth_matrix(), list(dataset.classes)
    return {
        "seed": seed,
        "tiny_clip_loss_ema": round(float(summary.get("final_loss_ema", float("nan"))), 4),
        "logit_scale": round(float(summary.get("logit_scale_exp", float("nan"))), 2),
        "global_map": round(evaluate(scores.global_scores, truth, classes).mean_ap, 4),
        "final_map": round(evaluate(final, truth, classes).mean_ap, 4),
        "scenes": len(dataset),
        "seconds": round(time.perf_counter() - started, 1),
        "trained_now": trained_s > 5,
    }


def summary(rows: list[dict]) -> None:
    median_map = statistics.median(r["final_map"] for r in rows)
    median_loss = statistics.median(r["tiny_clip_loss_ema"] for r in rows)
    worst = min(rows, key=lambda r: r["final_map"])
    highest = max(rows, key=lambda r: r["tiny_clip_loss_ema"])
    share = worst["final_map"] / median_map
    print(f"median final mAP {median_map:.3f}; worst seed {worst['seed']} "
          f"{worst['final_map']:.3f} = {share:.2f}x the median")  # fmt: skip
    print(f"median tiny CLIP loss {median_loss:.3f}; highest seed {highest['seed']} "
          f"{highest['tiny_clip_loss_ema']:.3f} = "
          f"{highest['tiny_clip_loss_ema'] / median_loss - 1:+.0%} over the median")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0-9,11", help="seeds: 0-9,11 (default)")
    parser.add_argument("--scenes", type=int, default=300, help="held-out scenes per world")
    parser.add_argument("--snippets", default="grid:3x3")
    parser.add_argument("--cache-dir", type=Path, default=None, help="default: $CDUL_CACHE_DIR")
    parser.add_argument("--workdir", type=Path, default=Path("artifacts/bench-world-seeds"))
    parser.add_argument(
        "--recipe", nargs="*", default=[], metavar="FIELD=VALUE",
        help="TinyClipRecipe fields other than the default's, e.g. zero_init_residual=false "
             "lr=1e-3 warmup_steps=100 steps=800",
    )  # fmt: skip
    add_results_option(parser)
    args = parser.parse_args()
    args.recipe = parse_recipe(args.recipe)
    print(f"tiny CLIP recipe: {args.recipe}")
    rows = []
    for seed in parse_seeds(args.seeds):
        row = seed_row(seed, args)
        print(row, flush=True)
        rows.append(row)
    summary(rows)
    write_results(args.results, rows)


if __name__ == "__main__":
    main()
