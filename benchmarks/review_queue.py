"""The review queue against a random order and "closest to the threshold", on world seeds
nothing was chosen on; and the Label Studio backend's speed.

Queue (``--part queue``), for each world seed (the scenes; the tiny CLIP and backbone are
the cached models of ``--models-seed``):

1. Label the training scenes through the real path (``cdul clip-serve`` in its own
   process, ``cdul label``, the default recipe), then ``cdul cross-fit --folds 2`` as
   ``cdul demo`` trains (world preset, 8 epochs, 96 px).
2. Rank every (image, class) pair by each ordering and count the truly wrong labels
   (the hard label at the run's label-free thresholds differs from the scene's ground
   truth) among the first 100 / 500 / 1000. Ground truth scores, never ranks.

Orderings: ``random``; ``closest to the threshold`` (|score - threshold|, the usual
uncertainty baseline); each term of :mod:`cdul.core.method.review` alone and summed;
``label-queue`` is what ``cdul label-queue`` writes (all terms the run has).

Backend (``--part backend``): ``cdul label-studio-backend`` on the first seed's run; the
latency of ``POST /predict`` for pages of 100 tasks (p50 / p99 over ``--pages``), and the
time ``cdul label-export --format label-studio --push`` takes for 1,000 tasks into a
real Label Studio (``$CDUL_LABEL_STUDIO``).

    .venv/bin/python benchmarks/review_queue.py --seeds 5,6,7 \\
        --results benchmarks/results/review_queue_world_cpu_fp32.csv
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import torch
from results_file import add_results_option, write_results

from cdul.clip_service import launch
from cdul.core.method import review
from cdul.core.pseudo_labels import read_pseudo_labels
from cdul.core.storage import open_store
from cdul.labeler.job import LabelConfig, label
from cdul.labels import out_of_fold
from cdul.labels.queue import EVIDENCE_VECTORS, priorities
from cdul.labels.reading import run_thresholds

TOPS = (100, 500, 1000)


def cdul(*args: str) -> str:
    process = subprocess.run([launch.CDUL, *args], stdout=subprocess.PIPE, text=True)
    if process.returncode != 0:
        sys.exit(f"cdul {' '.join(args)} failed with exit code {process.returncode}")
    return process.stdout


def wrong_share(order_scores: torch.Tensor, wrong: torch.Tensor, top: int) -> float:
    """Share of wrong labels among the ``top`` highest-scored pairs (ties: row-major)."""
    pairs = review.review_order(order_scores)[:top]
    return float(wrong[pairs[:, 0], pairs[:, 1]].double().mean())


def orderings(run: str, seed: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    store = open_store(run)
    labels = read_pseudo_labels(store)
    shipped = priorities(labels, store)
    scores, thresholds = labels["final"], shipped.thresholds.values
    hard = shipped.labels
    wrong = hard != (labels.ground_truth > 0)
    d = review.distance(scores, thresholds)
    e = review.evidence(hard, [(labels[v], run_thresholds(labels, v).values)
                               for v in EVIDENCE_VECTORS])  # fmt: skip
    found = out_of_fold.read(store)
    assert found is not None, f"{run} has no out-of-fold predictions"
    oof = found.aligned(list(labels.ids), run)
    a = review.against(hard, oof.probabilities, oof.thresholds)
    generator = torch.Generator().manual_seed(seed)
    return {
        "random": torch.rand(scores.shape, generator=generator),
        "closest to the threshold (|s - t|)": -(scores.double() - thresholds.double()).abs(),
        "- d (logit distance)": -d,
        "e (global and snippet evidence)": e,
        "a (out-of-fold classifier)": a,
        "e - d (no cross-fit)": review.priority(d, e),
        "a - d": review.priority(d, disagreement=a),
        "label-queue: a + e - d": shipped.values,
    }, wrong


def queue_rows(seed: int, endpoint: str, args: argparse.Namespace) -> list[dict]:
    world = args.workdir / f"world-s{seed}-{args.train}-{args.val}"
    if not (world / "ImageSets" / "Main" / "val.txt").is_file():
        cdul("world", "generate", str(world), "--seed", str(seed), "--train", str(args.train),
             "--val", str(args.val))  # fmt: skip
    run = args.workdir / f"s{seed}"
    if not (run / "pseudo_labels" / "manifest.json").is_file():
        shutil.rmtree(run, ignore_errors=True)
        label(LabelConfig(dataset=f"voc:{world}:train", output=f"file://{run}",
                          endpoints=(endpoint,), progress=False))  # fmt: skip
    if not (run / out_of_fold.OUT_OF_FOLD).is_file():
        models = json.loads(cdul("world", "models", "--seed", str(args.models_seed), "--json"))
        cdul("cross-fit", f"file://{run}", f"voc:{world}:train", "--folds", "2", "--preset",
             "world", "--arch", models["backbone_arch"], "--backbone-weights",
             models["backbone_weights"], "--epochs", "8", "--image-size", "96", "--seed",
             str(seed), "--no-progress")  # fmt: skip
    ranked, wrong = orderings(f"file://{run}", seed)
    base = {
        "seed": seed,
        "pairs": wrong.numel(),
        "wrong_share": round(float(wrong.double().mean()), 4),
    }
    return [{**base, "ordering": name, **{f"wrong_in_top{k}": round(wrong_share(s, wrong, k), 4)
                                          for k in TOPS}}
            for name, s in ranked.items()]  # fmt: skip


def backend_rows(seed: int, args: argparse.Namespace) -> list[dict]:
    """/predict latency for pages of 100 tasks (the backend in its own process, over
    loopback HTTP), then 1,000 tasks into a real Label Studio two ways: pushed by
    label-export, and pulled by Label Studio from the backend (its "retrieve predictions")."""
    import random
    import time
    import urllib.request

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from support import label_studio  # the tests' launcher: a real Label Studio on loopback

    from cdul.labels.export import ExportConfig, export
    from cdul.labels.formats.label_studio import labeling_config

    run = args.workdir / f"s{seed}"
    labels = read_pseudo_labels(open_store(f"file://{run}"))
    xml = labeling_config(list(labels.classes))
    process, url = label_studio.start_backend(f"file://{run}")
    rows = []
    try:
        rng = random.Random(seed)
        times = []
        for _ in range(args.pages):
            tasks = [
                {"id": k, "data": {"cdul_id": i, "image": "x"}}
                for k, i in enumerate(rng.sample(labels.ids, 100))
            ]
            body = json.dumps({"tasks": tasks, "label_config": xml}).encode()
            started = time.perf_counter()
            request = urllib.request.Request(
                url + "/predict", body, {"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(request) as response:
                assert len(json.loads(response.read())["results"]) == 100
            times.append(time.perf_counter() - started)
        times.sort()
        p50, p99 = times[len(times) // 2], times[min(len(times) - 1, int(len(times) * 0.99))]
        rows.append(
            {
                "seed": seed,
                "what": f"/predict, pages of 100 tasks ({args.pages} pages)",
                "p50_ms": round(p50 * 1e3, 2),
                "p99_ms": round(p99 * 1e3, 2),
                "seconds": "",
            }
        )
        if label_studio.executable() is None:
            print("no label-studio executable: the push and pull rows are skipped")
            return rows
        world = args.workdir / f"world-s{seed}-{args.train}-{args.val}"
        workdir = args.workdir / "label-studio"
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir()
        local = {"ML_BLOCK_LOCAL_IP": "false", "SSRF_PROTECTION_ENABLED": "false"}
        with label_studio.running(workdir, env=local) as studio:
            token = studio.call("POST", "/api/token/", {})["token"]
            os.environ["LABEL_STUDIO_API_KEY"] = token
            pushed = studio.call("POST", "/api/projects", {"title": "push", "label_config": xml})
            config = ExportConfig(
                run=f"file://{run}",
                output=str(workdir / "tasks.json"),
                format="label-studio",
                image_root=str(world),
                images=f"voc:{world}:train",
                push=studio.base,
                project=pushed["id"],
                progress=False,
            )
            started = time.perf_counter()
            export(config)
            rows.append(
                {
                    "seed": seed,
                    "what": f"label-export --push: {len(labels)} tasks with predictions",
                    "p50_ms": "",
                    "p99_ms": "",
                    "seconds": round(time.perf_counter() - started, 2),
                }
            )
            bare = [{"data": t["data"]} for t in json.loads((workdir / "tasks.json").read_text())]
            pulled = studio.call("POST", "/api/projects", {"title": "pull", "label_config": xml})
            studio.call("POST", f"/api/projects/{pulled['id']}/import", bare)
            studio.call("POST", "/api/ml", {"url": url, "project": pulled["id"], "title": "cdul"})
            started = time.perf_counter()
            studio.call(
                "POST",
                f"/api/dm/actions?id=retrieve_tasks_predictions&project={pulled['id']}",
                {"selectedItems": {"all": True, "excluded": []}},
            )
            rows.append(
                {
                    "seed": seed,
                    "what": f"Label Studio retrieves predictions for "
                    f"{len(labels)} tasks from the backend",
                    "p50_ms": "",
                    "p99_ms": "",
                    "seconds": round(time.perf_counter() - started, 2),
                }
            )
    finally:
        process.terminate()
        process.wait(30)
        process.stdout.close()
    return rows


def summary(rows: list[dict]) -> None:
    by: dict[str, list[dict]] = {}
    for row in rows:
        by.setdefault(row["ordering"], []).append(row)
    for name, members in by.items():
        cells = "  ".join(
            f"top{k} {statistics.mean(m[f'wrong_in_top{k}'] for m in members):.3f}" for k in TOPS
        )
        x500 = [m["wrong_in_top500"] / max(m["wrong_share"], 1e-9) for m in members]
        print(f"{name:<40} {cells}  top500 / overall share: "
              f"{' '.join(f'{x:.2f}' for x in x500)}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="5,6,7", help="world seeds (default 5,6,7)")
    parser.add_argument("--models-seed", type=int, default=0)
    parser.add_argument("--train", type=int, default=1000, help="training scenes per world")
    parser.add_argument("--val", type=int, default=300, help="val scenes (the world's layout)")
    parser.add_argument("--workdir", type=Path, default=Path("artifacts/bench-review-queue"))
    parser.add_argument("--part", choices=("queue", "backend", "all"), default="all")
    parser.add_argument("--pages", type=int, default=200, help="/predict pages to time")
    add_results_option(parser)
    args = parser.parse_args()
    args.workdir = args.workdir.resolve()  # runs record their dataset by this path
    models = json.loads(cdul("world", "models", "--seed", str(args.models_seed), "--json"))
    process, port = launch.spawn(["--model", models["clip_model"], "--pretrained",
                                  models["clip_pretrained"], "--metrics-port", "-1"])  # fmt: skip
    rows: list[dict] = []
    seeds = [int(s) for s in args.seeds.split(",")]
    try:
        if args.part in ("queue", "all"):
            for seed in seeds:
                found = queue_rows(seed, f"127.0.0.1:{port}", args)
                for row in found:
                    print(json.dumps(row), flush=True)
                rows += found
    finally:
        launch.stop(process)
    if rows:
        summary(rows)
        write_results(args.results, rows)
    if args.part in ("backend", "all"):
        timing = backend_rows(seeds[0], args)
        for row in timing:
            print(json.dumps(row), flush=True)
        if args.results:
            write_results(args.results.with_name(args.results.stem + "_backend.csv"), timing)


if __name__ == "__main__":
    main()
