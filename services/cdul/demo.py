"""``cdul demo``: the whole chain on one machine, offline, on the embedded world.

Each stage is the real job, run as its own process exactly as a user (or Kubernetes)
runs it: generate the world -> train or reuse the tiny CLIP and backbone -> start the
CLIP similarity service (gRPC) -> label the training scenes into the run -> train the
classifier with gradient alignment and export the archive -> start TorchServe (token
auth on) -> send held-out scenes over HTTP. Every process started here is stopped at
the end, on failure and on Ctrl-C/SIGTERM too. The run goes to a local directory by
default; ``--run s3://BUCKET/PREFIX`` (with ``S3_ENDPOINT``, ``S3_ACCESS_KEY``,
``S3_SECRET_KEY``) sends the same run to MinIO.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cdul.clip_service import launch
from cdul.core.errors import CdulError
from cdul.core.method.snippets import DEFAULT_SNIPPET_SPEC

MODEL_NAME = "cdul"
PREDICT_CONCURRENCY = 16  # the served batchSize (serving/config.properties)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path("artifacts/demo"),
        help="world, run and logs (default artifacts/demo)",
    )
    parser.add_argument("--run", default=None, help="run URI (default file://WORKDIR/run)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-scenes", type=int, default=1000)
    parser.add_argument("--val-scenes", type=int, default=300)
    # The trainer's "world" preset, shortened to keep the demo short: with the earlier
    # tiny CLIP 4 epochs at twice the preset's rate reached val mAP 0.628 where 8 at its
    # own reached 0.641 (seed 0), 64 px lost 0.2. With today's models (labels 0.94,
    # backbone on 48 px singles), 2 epochs with the labels moving after the first reach
    # 0.692 in 36 s, 3 with a 2-epoch warm-up 0.720 in 48 s; 3 at batch 32 and twice
    # the rate 0.703 in 44 s (2 cores, factor 2.67).
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--warmup-epochs", type=int, default=1,
                        help="epochs before the labels first move (Eq. 8)")  # fmt: skip
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--snippets", default=DEFAULT_SNIPPET_SPEC)
    parser.add_argument("--show", type=int, default=6, help="held-out scenes to print")


class DemoError(CdulError):
    """A stage of the demo failed; the message names it."""


@dataclass(frozen=True)
class Served:
    """The served classifier on the held-out scenes: its ranking, the labels it answered
    (label-free thresholds) and the labels at the best thresholds the truth would pick."""

    ranking: Any
    labels: Any
    ceiling: Any
    scenes: int


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _stage(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


def _run(stage: str, args: list[str]) -> str:
    """Run a ``cdul`` job; its output (progress bars) goes to the terminal; stdout returned."""
    process = subprocess.run([launch.CDUL, *args], stdout=subprocess.PIPE, text=True)
    sys.stdout.write(process.stdout)
    if process.returncode != 0:
        command = " ".join(args)
        raise DemoError(f"stage '{stage}' failed (exit {process.returncode}): cdul {command}")
    return process.stdout


def _start_clip_service(stack: ExitStack, clip: dict[str, str], log: Path) -> str:
    handle = stack.enter_context(log.open("w"))
    args = ["--model", clip["clip_model"], "--pretrained", clip["clip_pretrained"],
            "--metrics-port", "-1", "--grace", "5"]  # fmt: skip
    try:
        process, port = launch.spawn(args, stderr=handle)
    except launch.ClipServiceStartError as error:
        raise DemoError(f"{error}; see {log}") from None
    stack.callback(launch.stop, process)
    print(f"CLIP similarity service SERVING on 127.0.0.1:{port} (log: {log})")
    return f"127.0.0.1:{port}"


def _predict(server, image: bytes) -> dict:
    request = urllib.request.Request(
        f"{server.inference_url}/predictions/{MODEL_NAME}",
        data=image,
        headers={"Content-Type": "image/jpeg", **server.auth_headers("inference")},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    run_uri = args.run or f"file://{workdir / 'run'}"
    # SIGTERM (e.g. from a CI runner) unwinds like Ctrl-C, so every finally below runs.
    signal.signal(signal.SIGTERM, _interrupt)
    with ExitStack() as stack:
        # The world is drawn while the models train (or load): two processes at once.
        world, drawing = start_world(stack, args, workdir)
        models = world_models(args)
        finish_world(drawing, world, workdir)
        label(models, world, run_uri, args.snippets, workdir)
        # The gallery needs the labels only: it is drawn while the classifier trains.
        gallery = start_label_gallery(stack, run_uri, workdir)
        train(models, world, run_uri, args)
        server = serve(stack, run_uri, workdir)
        served = predict(server, world, args.show)
        gallery_page = finish_label_gallery(gallery, workdir)
    # Everything started above is stopped here (ExitStack), whatever happened.
    return summarise(args, run_uri, served, gallery_page, time.monotonic() - started)


def _start(stack: ExitStack, args: list[str], log: Path) -> subprocess.Popen:
    """A ``cdul`` job in the background, its output in ``log``; stopped with ``stack``."""
    handle = stack.enter_context(log.open("w"))
    process = subprocess.Popen([launch.CDUL, *args], stdout=handle, stderr=subprocess.STDOUT)
    stack.callback(launch.stop, process)  # a no-op once it has finished
    return process


def _finish(stage: str, process: subprocess.Popen, log: Path) -> None:
    """Wait for a job :func:`_start` started; a failure names the stage and the log."""
    if process.wait() != 0:
        raise DemoError(f"stage '{stage}' failed (exit {process.returncode}); see {log}")


def start_label_gallery(stack: ExitStack, run_uri: str, workdir: Path) -> subprocess.Popen:
    output = str(workdir / "gallery")
    return _start(stack, ["label-gallery", run_uri, "-o", output],
                  workdir / "gallery.log")  # fmt: skip


def finish_label_gallery(process: subprocess.Popen, workdir: Path) -> Path:
    _stage("7/7 the pseudo labels to look at: a static HTML gallery")
    log = workdir / "gallery.log"
    _finish("gallery", process, log)
    print(log.read_text(encoding="utf-8").rstrip())
    return workdir / "gallery" / "index.html"


def start_world(
    stack: ExitStack, args: argparse.Namespace, workdir: Path
) -> tuple[Path, subprocess.Popen | None]:
    """``cdul world generate`` in the background, unless the world is already there."""
    _stage("1/7 the embedded world (VOC layout)")
    world = workdir / f"world-s{args.seed}-{args.train_scenes}-{args.val_scenes}"
    if (world / "ImageSets" / "Main" / "val.txt").is_file():
        print(f"reusing {world}")
        return world, None
    log = workdir / "world.log"
    print(f"drawing {args.train_scenes} + {args.val_scenes} scenes into {world} in the "
          f"background (log: {log})")  # fmt: skip
    scenes = ["--train", str(args.train_scenes), "--val", str(args.val_scenes)]
    command = ["world", "generate", str(world), "--seed", str(args.seed), *scenes]
    return world, _start(stack, command, log)


def finish_world(process: subprocess.Popen | None, world: Path, workdir: Path) -> None:
    if process is not None:
        _finish("world", process, workdir / "world.log")
        print(f"world ready: voc:{world}:train and voc:{world}:val")


def world_models(args: argparse.Namespace) -> dict[str, str]:
    _stage("2/7 tiny CLIP and backbone (trained once, then cached)")
    return json.loads(_run("models", ["world", "models", "--json", "--seed", str(args.seed)]))


def label(models: dict[str, str], world: Path, run_uri: str, snippets: str, workdir: Path) -> None:
    _stage("3/7 CLIP similarity service (gRPC) + labeler")
    with ExitStack() as service:  # stopped once the labels are written
        endpoint = _start_clip_service(service, models, workdir / "clip-service.log")
        _run("label", ["label", f"voc:{world}:train", "-o", run_uri, "--endpoint", endpoint,
                       "--snippets", snippets])  # fmt: skip


def train(models: dict[str, str], world: Path, run_uri: str, args: argparse.Namespace) -> None:
    _stage("4/7 trainer: ResNet on the pseudo labels with gradient alignment")
    _run("train", ["train", run_uri, f"voc:{world}:train", "--val", f"voc:{world}:val",
                   "--preset", "world", "--arch", models["backbone_arch"],
                   "--backbone-weights", models["backbone_weights"], "--epochs", str(args.epochs),
                   "--warmup-epochs", str(args.warmup_epochs), "--lr", str(args.lr),
                   "--image-size", str(args.image_size), "--seed", str(args.seed)])  # fmt: skip


def serve(stack: ExitStack, run_uri: str, workdir: Path):
    from cdul.core.storage import open_store
    from cdul.serving.local import PRODUCTION_CONFIG, LocalTorchServe
    from cdul.trainer.export import PREFIX as MODEL_STORE

    _stage("5/7 TorchServe (token auth on) with the exported archive")
    local_store = workdir / "model-store"  # TorchServe reads a local directory; reused
    local_store.mkdir(exist_ok=True)
    open_store(run_uri).read_file(
        f"{MODEL_STORE}/{MODEL_NAME}.mar", local_store / f"{MODEL_NAME}.mar"
    )
    server = LocalTorchServe(local_store, {MODEL_NAME: f"{MODEL_NAME}.mar"},
                             workdir / "torchserve", base_config=PRODUCTION_CONFIG)  # fmt: skip
    stack.enter_context(server)
    print(f"TorchServe READY at {server.inference_url}/predictions/{MODEL_NAME}")
    return server


def predict(server, world: Path, show: int):
    """Every held-out scene over HTTP; prints a few; the served mAP's evaluation."""
    import torch

    from cdul.core.datasets import open_dataset
    from cdul.core.evaluation import evaluate, label_f1
    from cdul.core.method.thresholds import calibrated

    _stage("6/7 held-out scenes over HTTP")
    val = open_dataset(f"voc:{world}:val")
    # Several requests in flight, as callers send them: TorchServe batches them (batchSize,
    # maxBatchDelay) instead of holding each lone request for the batch delay.
    with ThreadPoolExecutor(max_workers=PREDICT_CONCURRENCY) as pool:
        answers = list(pool.map(lambda i: _predict(server, Path(val.image_path(i)).read_bytes()),
                                range(len(val))))  # fmt: skip
    probabilities = torch.tensor([[a["probabilities"][c] for c in val.classes]
                                  for a in answers])  # fmt: skip
    labelled = [set(a["labels"]) for a in answers]
    truth = val.ground_truth_matrix()
    # The labels are the served ones: each class over its own threshold in the archive,
    # which `cdul train` chose without ground truth (callers may send X-Threshold).
    shown = ", ".join(f"{c} {t:.2f}" if t is not None else f"{c} never"
                      for c, t in answers[0]["thresholds"].items())  # fmt: skip
    print(f"labels over each class's threshold in the archive, chosen without ground truth: "
          f"{shown}")  # fmt: skip
    for i in range(min(show, len(val))):
        predicted = [c for c in val.classes if c in labelled[i]]
        actual = [c for c, t in zip(val.classes, truth[i].tolist(), strict=True) if t]
        mark = "ok " if predicted == actual else "   "
        said = ", ".join(predicted) or "-"
        print(f"{mark}{val.ids()[i]}: predicted {said}  |  truth {', '.join(actual)}")
    served = torch.tensor([[c in chosen for c in val.classes] for chosen in labelled])
    best = probabilities >= calibrated(probabilities, truth)
    return Served(
        evaluate(probabilities, truth, val.classes),
        label_f1(served, truth, val.classes),
        label_f1(best, truth, val.classes),
        len(val),
    )


def summarise(
    args: argparse.Namespace, run_uri: str, served: Served, gallery: Path, seconds: float
) -> int:
    from cdul.core.pseudo_labels import EVALUATION_JSON, MANIFEST
    from cdul.core.storage import open_store
    from cdul.trainer.export import PREFIX as MODEL_STORE
    from cdul.trainer.loop import CURVES_KEY, METRICS_KEY

    store = open_store(run_uri)
    pseudo = store.read_json(EVALUATION_JSON)
    metrics = [json.loads(line) for line in store.read_text(METRICS_KEY).splitlines() if line]
    first, last = metrics[0], metrics[-1]
    final = pseudo["final"]
    rows = [
        ("pseudo-label mAP, global (Eq. 2)", pseudo["global"]["mAP"]),
        ("pseudo-label mAP, aggregate (the snippets' per class)", pseudo["aggregate"]["mAP"]),
        ("pseudo-label mAP, final (the label: global and aggregate mixed)", final["mAP"]),
        ("pseudo labels (final), macro-F1 at label-free thresholds", final["labels"]["macro_f1"]),
        (f"pseudo-label mAP after training (epoch {last['epoch']})", last["pseudo_label_map"]),
        (f"val mAP of the served classifier ({served.scenes} scenes over HTTP)",
         served.ranking.mean_ap),
        ("served labels, macro-F1 (label-free thresholds)", served.labels.macro_f1),
        ("served labels, micro-F1 (label-free thresholds)", served.labels.micro_f1),
    ]  # fmt: skip
    print("\n" + "=" * 72)
    print(f"CDUL demo: {args.train_scenes} training scenes, {args.snippets}, "
          f"{args.epochs} epochs, {seconds:.0f} s")  # fmt: skip
    for name, value in rows:
        print(f"  {name:<64}{value:>8.3f}")
    print(
        f"  served labels per image {served.labels.labels_per_image:.2f} (truth "
        f"{served.labels.truth_per_image:.2f}); with the held-out ground truth picking each "
        f"class's threshold (not label-free) macro-F1 would be {served.ceiling.macro_f1:.3f}"
    )
    print(f"  (trainer's val mAP at its last epoch: {last['val_map']:.3f}; "
          f"pseudo-label mAP before training: {first['pseudo_label_map']:.3f})")  # fmt: skip
    print("artefacts:")
    artefacts = (("pseudo labels", MANIFEST), ("label evaluation", EVALUATION_JSON),
                 ("metrics", METRICS_KEY), ("curves", CURVES_KEY),
                 ("archive", f"{MODEL_STORE}/{MODEL_NAME}.mar"))  # fmt: skip
    for what, key in artefacts:
        print(f"  {what:<17}{store.uri_for(key)}")
    print("=" * 72)
    print(f"The labels, to look at in a browser: {gallery}")
    if pseudo["final"]["mAP"] <= pseudo["global"]["mAP"]:
        raise DemoError("final pseudo-label mAP is not above global: the method did not help")
    return 0
