"""Hard labels without ground truth: label-free thresholds against one global 0.5 and the
ceiling, for the pseudo labels and for the served classifier, on world seeds no README
table or test chose anything on.

For each world seed (the scenes; the world's tiny CLIP and backbone are those of
``--models-seed``, 0 by default: the cached ones):

1. Label the training scenes through the real path (``cdul clip-serve`` in its own
   process, ``cdul label`` here) with each recipe of ``--recipes`` (the default and the
   paper's): pseudo-label macro mAP, and for every threshold rule in :data:`PSEUDO_RULES`
   the macro/micro F1 and labels per image of the final labels against the scenes'
   ground truth. ``ceiling``: each class's threshold chosen with that ground truth (the
   best any per-class thresholds can do on those images; not label-free).
2. Train the classifier on each run as ``cdul demo`` does (world preset, 8 epochs,
   96 px; no ``--val``, so nothing but the pseudo labels decides its thresholds) and
   read its archive. On the held-out val scenes: the served labels at the archive's
   thresholds (label-free), at one 0.5, at the ceiling (chosen with the val truth),
   and the other classifier rules of :data:`CLASSIFIER_RULES`.

Ground truth is used to score, never to choose. Every row (seed x recipe x rule) is
printed and goes to ``--results FILE.csv``; the summary is the mean over the seeds, with
each rule's macro-F1 as a share of the ceiling's.

    .venv/bin/python benchmarks/hard_labels.py --seeds 5,6,7 \\
        --results benchmarks/results/hard_labels_world_cpu_fp32.csv
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from results_file import add_results_option, write_results

from cdul.clip_service import launch
from cdul.core.datasets import open_dataset
from cdul.core.evaluation import evaluate, label_f1
from cdul.core.method.recipes import NAMED_RECIPES
from cdul.core.method.thresholds import calibrated, otsu
from cdul.core.pseudo_labels import read_pseudo_labels
from cdul.core.storage import open_store
from cdul.core.transforms import eval_transform
from cdul.labeler.job import LabelConfig, label
from cdul.serving.config import CONFIG_FILE_NAME, ClassifierConfig, load_classifier

Rule = Callable[[torch.Tensor], torch.Tensor]  # (N, C) scores -> (N, C) labels


def per_class(thresholds: Callable[[torch.Tensor], torch.Tensor]) -> Rule:
    return lambda scores: scores >= thresholds(scores)


#: The label-free rules measured on pseudo labels; "default" is the one runs are read with.
PSEUDO_RULES: dict[str, Rule] = {
    "default: otsu per class (guard 60%)": per_class(otsu),
    "otsu per class, no guard": per_class(lambda s: otsu(s, max_share=1.0)),
    "one threshold 0.5": lambda s: s >= 0.5,
    "image-relative: >= 0.5 x the image's top": lambda s: s >= 0.5 * s.amax(1, keepdim=True),
    "image-relative: >= 0.3 x the image's top": lambda s: s >= 0.3 * s.amax(1, keepdim=True),
}
#: The classifier rules measured besides the archive's and 0.5: (outputs on the training
#: images, hard pseudo labels of the training images) -> (C,) thresholds.
CLASSIFIER_RULES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "otsu per class on the outputs for the training images": lambda train, hard: otsu(train),
}


def cdul(*args: str) -> str:
    process = subprocess.run([launch.CDUL, *args], stdout=subprocess.PIPE, text=True)
    if process.returncode != 0:
        sys.exit(f"cdul {' '.join(args)} failed with exit code {process.returncode}")
    return process.stdout


def f1_row(predicted: torch.Tensor, truth: torch.Tensor, classes: list[str]) -> dict:
    f1 = label_f1(predicted, truth, classes)
    return {"macro_f1": round(f1.macro_f1, 4), "micro_f1": round(f1.micro_f1, 4),
            "labels_per_image": round(f1.labels_per_image, 3),
            "truth_per_image": round(f1.truth_per_image, 3)}  # fmt: skip


def outputs(run: Path, world: Path, split: str) -> tuple[torch.Tensor, ClassifierConfig]:
    """The archived classifier's sigmoid outputs on every image of ``split``."""
    config = ClassifierConfig.read(run / "model-store" / CONFIG_FILE_NAME)
    model = load_classifier(run / "model-store" / "classifier.pt", config)
    dataset, transform = open_dataset(f"voc:{world}:{split}"), eval_transform(config.image_size)
    with torch.inference_mode():
        chunks = [torch.sigmoid(model(torch.stack([transform(dataset.load(i).image)
                                                   for i in range(s, min(s + 64, len(dataset)))])))
                  for s in range(0, len(dataset), 64)]  # fmt: skip
    return torch.cat(chunks), config


def seed_rows(seed: int, recipe_name: str, endpoint: str, args: argparse.Namespace) -> list[dict]:
    world = args.workdir / f"world-s{seed}-{args.train}-{args.val}"
    if not (world / "ImageSets" / "Main" / "val.txt").is_file():
        cdul("world", "generate", str(world), "--seed", str(seed), "--train", str(args.train),
             "--val", str(args.val))  # fmt: skip
    recipe = RECIPES[recipe_name]
    run = args.workdir / f"s{seed}-{recipe_name}"
    if not (run / "pseudo_labels" / "manifest.json").is_file():
        shutil.rmtree(run, ignore_errors=True)
        config = LabelConfig(
            dataset=f"voc:{world}:train",
            output=f"file://{run}",
            endpoints=(endpoint,),
            progress=False,
            recipe_name=recipe_name,
        )
        label(config)
    labels = read_pseudo_labels(open_store(f"file://{run}"))
    truth, classes, final = labels.ground_truth, list(labels.classes), labels["final"]
    mean_ap = round(evaluate(final, truth, classes).mean_ap, 4)
    base = {"seed": seed, "recipe": str(recipe), "pseudo_label_mAP": mean_ap,
            "classifier_val_mAP": ""}  # fmt: skip
    rows = [{**base, "what": "pseudo labels (train)", "rule": "ceiling (ground truth)",
             **f1_row(final >= calibrated(final, truth), truth, classes)}]  # fmt: skip
    rows += [{**base, "what": "pseudo labels (train)", "rule": name, **f1_row(rule(final), truth,
              classes)} for name, rule in PSEUDO_RULES.items()]  # fmt: skip
    if not (run / "model-store" / "classifier.pt").is_file():
        models = json.loads(cdul("world", "models", "--seed", str(args.models_seed), "--json"))
        cdul("train", f"file://{run}", f"voc:{world}:train", "--preset", "world", "--arch",
             models["backbone_arch"], "--backbone-weights", models["backbone_weights"],
             "--epochs", "8", "--image-size", "96", "--seed", str(seed), "--no-progress",
             "--no-archive")  # fmt: skip
    val, config = outputs(run, world, "val")
    train, _ = outputs(run, world, "train")
    val_truth = open_dataset(f"voc:{world}:val").ground_truth_matrix()
    hard = final >= torch.tensor(labels.manifest.thresholds["final"])
    base["classifier_val_mAP"] = round(evaluate(val, val_truth, classes).mean_ap, 4)
    served = torch.tensor(config.decision_thresholds())
    measured = {
        "ceiling (ground truth)": calibrated(val, val_truth),
        f"default: the archive's ({config.thresholds_from})": served,
        "one threshold 0.5": torch.full_like(served, 0.5),
        **{name: rule(train, hard) for name, rule in CLASSIFIER_RULES.items()},
    }
    rows += [{**base, "what": "served classifier (val)", "rule": name,
              **f1_row(val >= thresholds, val_truth, classes)}
             for name, thresholds in measured.items()]  # fmt: skip
    return rows


RECIPES = NAMED_RECIPES


def summary(rows: list[dict]) -> None:
    """Mean over the seeds per (recipe, what, rule), with the share of the ceiling."""
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["recipe"], row["what"], row["rule"]), []).append(row)
    for (recipe, what, rule), members in groups.items():
        ceiling = groups[(recipe, what, "ceiling (ground truth)")]
        ratio = [m["macro_f1"] / c["macro_f1"] for m, c in zip(members, ceiling, strict=True)]
        print(f"{recipe:<24} {what:<24} {rule[:58]:<58} macro-F1 "
              f"{statistics.mean(m['macro_f1'] for m in members):.3f}  micro-F1 "
              f"{statistics.mean(m['micro_f1'] for m in members):.3f}  labels/img "
              f"{statistics.mean(m['labels_per_image'] for m in members):.2f}  "
              f"/ceiling {statistics.mean(ratio):.3f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="5,6,7", help="world seeds (default 5,6,7)")
    parser.add_argument("--models-seed", type=int, default=0)
    parser.add_argument("--recipes", default="default,paper", help="of: " + ", ".join(RECIPES))
    parser.add_argument("--train", type=int, default=1000, help="training scenes per world")
    parser.add_argument("--val", type=int, default=300, help="held-out scenes per world")
    parser.add_argument("--workdir", type=Path, default=Path("artifacts/bench-hard-labels"))
    add_results_option(parser)
    args = parser.parse_args()
    models = json.loads(cdul("world", "models", "--seed", str(args.models_seed), "--json"))
    process, port = launch.spawn(["--model", models["clip_model"], "--pretrained",
                                  models["clip_pretrained"], "--metrics-port", "-1"])  # fmt: skip
    rows: list[dict] = []
    try:
        for seed in (int(s) for s in args.seeds.split(",")):
            for recipe in args.recipes.split(","):
                found = seed_rows(seed, recipe, f"127.0.0.1:{port}", args)
                for row in found:
                    print(json.dumps(row), flush=True)
                rows += found
    finally:
        launch.stop(process)
    summary(rows)
    write_results(args.results, rows)


if __name__ == "__main__":
    main()
