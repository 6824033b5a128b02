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
from contextlib import ExitStack
from pathlib import Path

from cdul.clip_service import launch
from cdul.core.errors import CdulError

REPO = Path(__file__).resolve().parents[2]
MODEL_NAME = "cdul"


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
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--update-every", type=int, default=5, help="F, epochs between updates")
    parser.add_argument("--warmup-epochs", type=int, default=2)
    parser.add_argument("--snippets", default="grid:3x3")
    parser.add_argument("--show", type=int, default=6, help="held-out scenes to print")


class DemoError(CdulError):
    """A stage of the demo failed; the message names it."""


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
    import torch

    from cdul.core.datasets import open_dataset
    from cdul.core.evaluation import evaluate
    from cdul.core.pseudo_labels import EVALUATION_JSON, MANIFEST
    from cdul.core.storage import open_store
    from cdul.serving.local import LocalTorchServe
    from cdul.trainer.export import PREFIX as MODEL_STORE
    from cdul.trainer.loop import CURVES_KEY, METRICS_KEY

    started = time.monotonic()
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    run_uri = args.run or f"file://{workdir / 'run'}"
    world = workdir / f"world-s{args.seed}-{args.train_scenes}-{args.val_scenes}"
    # SIGTERM (e.g. from a CI runner) unwinds like Ctrl-C, so every finally below runs.
    signal.signal(signal.SIGTERM, _interrupt)

    with ExitStack() as stack:
        _stage("1/6 the embedded world (VOC layout)")
        if (world / "ImageSets" / "Main" / "val.txt").is_file():
            print(f"reusing {world}")
        else:
            _run(
                "world",
                [
                    "world",
                    "generate",
                    str(world),
                    "--seed",
                    str(args.seed),
                    "--train",
                    str(args.train_scenes),
                    "--val",
                    str(args.val_scenes),
                ],
            )

        _stage("2/6 tiny CLIP and backbone (trained once, then cached)")
        models = json.loads(_run("models", ["world", "models", "--json", "--seed", str(args.seed)]))

        _stage("3/6 CLIP similarity service (gRPC) + labeler")
        endpoint = _start_clip_service(stack, models, workdir / "clip-service.log")
        _run(
            "label",
            [
                "label",
                f"voc:{world}:train",
                "-o",
                run_uri,
                "--endpoint",
                endpoint,
                "--snippets",
                args.snippets,
            ],
        )
        stack.close()  # the CLIP service is not needed any more
        store = open_store(run_uri)
        pseudo = store.read_json(EVALUATION_JSON)

        _stage("4/6 trainer: ResNet on the pseudo labels with gradient alignment")
        _run(
            "train",
            [
                "train",
                run_uri,
                f"voc:{world}:train",
                "--val",
                f"voc:{world}:val",
                "--arch",
                models["backbone_arch"],
                "--backbone-weights",
                models["backbone_weights"],
                "--epochs",
                str(args.epochs),
                "--image-size",
                str(args.image_size),
                "--seed",
                str(args.seed),
                "--batch-size",
                "16",
                "--lr",
                "1e-4",
                "--label-step",
                "1",
                "--update-every",
                str(args.update_every),
                "--warmup-epochs",
                str(args.warmup_epochs),
            ],
        )
        lines = store.read_text(METRICS_KEY).splitlines()
        metrics = [json.loads(line) for line in lines if line.strip()]

        _stage("5/6 TorchServe (token auth on) with the exported archive")
        archive = f"{MODEL_STORE}/{MODEL_NAME}.mar"
        local_store = workdir / "model-store"  # TorchServe reads a local directory; reused
        local_store.mkdir(exist_ok=True)
        store.read_file(archive, local_store / f"{MODEL_NAME}.mar")
        config = REPO / "deploy" / "torchserve" / "config.properties"
        server = LocalTorchServe(
            local_store,
            {MODEL_NAME: f"{MODEL_NAME}.mar"},
            workdir / "torchserve",
            base_config=config if config.is_file() else None,
        )
        stack.enter_context(server)
        print(f"TorchServe READY at {server.inference_url}/predictions/{MODEL_NAME}")

        _stage("6/6 held-out scenes over HTTP")
        val = open_dataset(f"voc:{world}:val")
        answers = [_predict(server, Path(val.image_path(i)).read_bytes()) for i in range(len(val))]
        probabilities = torch.tensor([[a["probabilities"][c] for c in val.classes]
                                      for a in answers])  # fmt: skip
        labelled = [set(a["labels"]) for a in answers]
        truth = val.ground_truth_matrix()
        served = evaluate(probabilities, truth, val.classes)
        # The labels are the served ones: over the archive's default threshold, which
        # `cdul train` calibrated on the validation split (callers may send X-Threshold).
        threshold = answers[0]["threshold"]
        print(f"labels over the archive's threshold {threshold:.2f} (best micro-F1 on the "
              "validation split, chosen by cdul train)")  # fmt: skip
        for i in range(min(args.show, len(val))):
            predicted = [c for c in val.classes if c in labelled[i]]
            actual = [c for c, t in zip(val.classes, truth[i].tolist(), strict=True) if t]
            mark = "ok " if predicted == actual else "   "
            said = ", ".join(predicted) or "-"
            print(f"{mark}{val.ids()[i]}: predicted {said}  |  truth {', '.join(actual)}")
    # Everything started above is stopped here (ExitStack), whatever happened.

    first, last = metrics[0], metrics[-1]
    rows = [
        ("pseudo-label mAP, global (Eq. 2)", pseudo["global"]["mAP"]),
        ("pseudo-label mAP, aggregate (Eq. 6)", pseudo["aggregate"]["mAP"]),
        ("pseudo-label mAP, final (Eq. 7)", pseudo["final"]["mAP"]),
        (f"pseudo-label mAP after training (epoch {last['epoch']})", last["pseudo_label_map"]),
        (f"val mAP of the served classifier ({len(val)} scenes over HTTP)", served.mean_ap),
    ]
    print("\n" + "=" * 72)
    print(
        f"CDUL demo: {args.train_scenes} training scenes, {args.snippets}, "
        f"{args.epochs} epochs, {time.monotonic() - started:.0f} s"
    )
    for name, value in rows:
        print(f"  {name:<58}{value:>8.3f}")
    print(
        f"  (trainer's val mAP at its last epoch: {last['val_map']:.3f}; "
        f"pseudo-label mAP before training: {first['pseudo_label_map']:.3f})"
    )
    print("artefacts:")
    artefacts = (
        ("pseudo labels", MANIFEST),
        ("label evaluation", EVALUATION_JSON),
        ("metrics", METRICS_KEY),
        ("curves", CURVES_KEY),
        ("archive", archive),
    )
    for what, key in artefacts:
        print(f"  {what:<17}{store.uri_for(key)}")
    print("=" * 72)
    if pseudo["final"]["mAP"] <= pseudo["global"]["mAP"]:
        raise DemoError("final pseudo-label mAP is not above global: the method did not help")
    return 0
