"""Label recipes side by side on the embedded world (the README's recipe table).

For each world seed (the scenes; the world's tiny CLIP and backbone are those of
``--models-seed``, 0 by default: the cached ones, a new seed trains them first):

1. Label the val scenes through the real path (``cdul clip-serve`` in its own process,
   ``cdul label`` here) once per *labeling*: what CLIP computes (snippet spec, prompt
   templates). Each gets CLIP forwards per image and images/s, measured in this run.
2. From each labeling's stored cosines, every *recipe* of the sweep (aggregation x global
   weight x debias; :mod:`cdul.core.method.recipes`), no CLIP call: pseudo-label mAP
   against the val ground truth.
3. With ``--train``: the paper's recipe and the two best others (by mean mAP over the
   seeds) label the training scenes and train the classifier (the demo's settings: world
   preset, 8 epochs, 96 px); its val mAP at the last epoch.

Templates are open_clip's ImageNet sets, never tuned to the world's captions. Every row
is printed and goes to ``--results FILE.csv``.

    .venv/bin/python benchmarks/label_recipes.py --seeds 0,1 --train \\
        --results benchmarks/results/label_recipes_world_cpu_fp32.csv
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from results_file import add_results_option, write_results

from cdul.clip_service import launch
from cdul.core.pseudo_labels import read_pseudo_labels
from cdul.core.storage import open_store
from cdul.labeler.job import LabelConfig, label
from cdul.labels.sweep import recipes, sweep
from cdul.trainer.loop import METRICS_KEY

# name -> (snippet spec, templates): what CLIP computes.
LABELINGS = {
    "grid:3x3": ("grid:3x3", None),
    "grid:3x3 + simple templates": ("grid:3x3", "simple"),
    "grid:3x3 + openai templates": ("grid:3x3", "openai"),
    "grid:2x2": ("grid:2x2", None),
    "dense (64 px, 2x2 cells)": ("dense", None),
    "dense:128 (4x4 cells)": ("dense:128", None),
}
GRID = recipes(["paper", "max", "mean", "topk:2", "topk:3"], [0.5], [0.5, 0.25, 0.0],
               ["none", "class-mean"])  # fmt: skip


def cdul(*args: str) -> str:
    process = subprocess.run([launch.CDUL, *args], stdout=subprocess.PIPE, text=True)
    if process.returncode != 0:
        sys.exit(f"cdul {' '.join(args)} failed with exit code {process.returncode}")
    return process.stdout


MODELS_SEED = [0]  # set from --models-seed


def models() -> dict[str, str]:
    return json.loads(cdul("world", "models", "--seed", str(MODELS_SEED[0]), "--json"))


def serve() -> tuple[subprocess.Popen[str], int]:
    """``cdul clip-serve`` with the world's tiny CLIP, in its own process."""
    clip = models()
    return launch.spawn(["--model", clip["clip_model"], "--pretrained", clip["clip_pretrained"],
                         "--metrics-port", "-1"])  # fmt: skip


def world(workdir: Path, seed: int, train: int, val: int) -> Path:
    root = workdir / f"world-s{seed}-{train}-{val}"
    if not (root / "ImageSets" / "Main" / "val.txt").is_file():
        cdul("world", "generate", str(root), "--seed", str(seed), "--train", str(train),
             "--val", str(val))  # fmt: skip
    return root


def label_run(endpoint: str, dataset: str, output: Path, spec: str, templates: str | None,
              **recipe: object) -> float:  # fmt: skip
    """Label into a fresh ``output``; seconds taken."""
    shutil.rmtree(output, ignore_errors=True)
    config = LabelConfig(dataset=dataset, output=f"file://{output}", endpoints=(endpoint,),
                         snippet_spec=spec, templates=templates, progress=False,
                         **recipe)  # fmt: skip
    start = time.perf_counter()
    label(config)
    return time.perf_counter() - start


def sweep_seed(seed: int, endpoint: str, root: Path, workdir: Path, val: int) -> list[dict]:
    # Warm-up (the service's first requests load the label set and the allocator).
    label_run(endpoint, f"voc:{root}:val", workdir / "warm-up", "grid:3x3", None, limit=32)
    rows = []
    for name, (spec, templates) in LABELINGS.items():
        output = workdir / f"s{seed}" / name.split(" ")[0].replace(":", "-") / (templates or "one")
        seconds = label_run(endpoint, f"voc:{root}:val", output, spec, templates)
        labels = read_pseudo_labels(open_store(f"file://{output}"), cosines=True)
        snippets = int(labels.cosines.counts[0])
        forwards = 1 if spec.startswith("dense") else 1 + snippets
        glob = labels.manifest.evaluation["global"]["mAP"]
        swept, _ = sweep(labels, GRID)  # label-sweep's own rows (the run stores cosines)
        for recipe, row in zip(GRID, swept, strict=True):
            rows.append({
                "seed": seed, "labeling": name, "spec": spec, "templates": templates or "",
                "recipe": str(recipe), "aggregation": recipe.aggregation,
                "global_weight": recipe.global_weight, "debias": recipe.debias,
                "forwards_per_image": forwards, "images_per_s": round(val / seconds, 1),
                "global_mAP": round(glob, 4),
                "pseudo_label_mAP": round(row["final_mAP"], 4),
                "macro_f1_label_free": round(row["final_F1"], 4),
            })  # fmt: skip
        paper = next(r for r in rows[-len(GRID) :] if r["recipe"] == "paper(zeta=0.5) w=0.5")
        best = max(rows[-len(GRID) :], key=lambda r: r["pseudo_label_mAP"])
        print(f"seed {seed} {name:<30} {forwards:>3} fwd/img {val / seconds:7.1f} img/s  "
              f"paper {paper['pseudo_label_mAP']:.3f}  best {best['pseudo_label_mAP']:.3f} "
              f"({best['recipe']})", flush=True)  # fmt: skip
    return rows


def train_row(seed: int, endpoint: str, root: Path, workdir: Path, labeling: str, recipe: str,
              rows: list[dict], args: argparse.Namespace) -> dict:  # fmt: skip
    spec, templates = LABELINGS[labeling]
    sample = next(r for r in rows if r["labeling"] == labeling and r["recipe"] == recipe)
    flags = {"aggregation": sample["aggregation"], "global_weight": sample["global_weight"],
             "debias": sample["debias"]}  # fmt: skip
    run = workdir / f"s{seed}" / "train" / f"{labeling}-{recipe}".replace(" ", "_").replace(
        ":", "-").replace("/", "-")  # fmt: skip
    label_run(endpoint, f"voc:{root}:train", run, spec, templates, **flags)
    trained = models()
    cdul("train", f"file://{run}", f"voc:{root}:train", "--val", f"voc:{root}:val", "--preset",
         "world", "--arch", trained["backbone_arch"], "--backbone-weights",
         trained["backbone_weights"], "--epochs", str(args.epochs), "--image-size",
         str(args.image_size), "--seed", str(seed), "--no-progress")  # fmt: skip
    metrics = [json.loads(line) for line in open_store(f"file://{run}").read_text(METRICS_KEY)
               .splitlines() if line]  # fmt: skip
    return {"seed": seed, "labeling": labeling, "recipe": recipe,
            "train_pseudo_label_mAP": round(metrics[0]["pseudo_label_map"], 4),
            "classifier_val_mAP": round(metrics[-1]["val_map"], 4)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--models-seed", type=int, default=0, help="the tiny CLIP's and backbone's")
    parser.add_argument("--val", type=int, default=300, help="val scenes per seed")
    parser.add_argument("--train-scenes", type=int, default=1000)
    parser.add_argument("--train", action="store_true", help="also train the classifiers")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--workdir", type=Path, default=Path("artifacts/bench-recipes"))
    add_results_option(parser)
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    MODELS_SEED[0] = args.models_seed
    rows, roots, endpoints, servers = [], {}, {}, []
    try:
        for seed in seeds:
            process, port = serve()
            servers.append(process)
            endpoints[seed] = f"127.0.0.1:{port}"
            roots[seed] = world(args.workdir, seed, args.train_scenes, args.val)
            rows += sweep_seed(seed, endpoints[seed], roots[seed], args.workdir, args.val)
            launch.stop(servers.pop(), grace_s=5)
        mean: dict[tuple[str, str], list[float]] = {}
        for row in rows:
            mean.setdefault((row["labeling"], row["recipe"]), []).append(row["pseudo_label_mAP"])
        # Debiasing rescales each class: mAP (per-class ranks) cannot see it, so a debiased
        # recipe ties with its plain twin; rank the plain ones, train both for the best.
        plain = [k for k in mean if "debias" not in k[1]]
        ranked = sorted(plain, key=lambda k: statistics.mean(mean[k]), reverse=True)
        print("\nbest recipes (mean over seeds; per seed):")
        for key in ranked[:10]:
            print(f"  {statistics.mean(mean[key]):.4f}  {mean[key]}  {key[0]} / {key[1]}")
        paper = ("grid:3x3", "paper(zeta=0.5) w=0.5")
        print(f"  paper: {statistics.mean(mean[paper]):.4f}  {mean[paper]}")
        trained = []
        if args.train:
            best = [k for k in ranked if k != paper][:2]
            chosen = [paper, *best, (best[0][0], best[0][1] + " debias=class-mean")]
            for seed in seeds:
                process, port = serve()
                servers.append(process)
                for labeling, recipe in chosen:
                    row = train_row(seed, f"127.0.0.1:{port}", roots[seed], args.workdir,
                                    labeling, recipe, rows, args)  # fmt: skip
                    print(f"trained: {row}", flush=True)
                    trained.append(row)
                launch.stop(servers.pop(), grace_s=5)
    finally:
        for process in servers:
            launch.stop(process, grace_s=5)
    if args.results:
        write_results(args.results, rows)
        if trained:
            write_results(args.results.with_name(args.results.stem + "_trained.csv"), trained)


if __name__ == "__main__":
    main()
