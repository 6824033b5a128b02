"""The classifier behind TorchServe (batching, 16 concurrent HTTP clients) against
the same model called in-process, on the same images, side by side in one run (P5).

    .venv/bin/python benchmarks/torchserve_vs_in_process.py [--arch resnet18] [--image-size 224]

Both sides do the same work per image: decode the JPEG with the project's decoder,
the trainer's eval transform, a batched forward, sigmoid. In-process, batches of
``--batch-size`` images go straight to the model. Served, ``--clients`` threads each
hold a keep-alive HTTP connection and post one image at a time; TorchServe (one
worker, token auth on, Prometheus metrics, as in production) gathers up to
``--batch-size`` requests per forward, waiting at most ``--max-batch-delay`` ms.
Rounds alternate (direct, served, direct, ...) so a change in machine load hits both;
the ratio is served / direct of the median images/s (goal >= 0.7), the README's P5
figure. The clients run on the same machine and their CPU time counts against the
server, as it would for a sidecar or a colocated caller. ``--results FILE.csv`` writes
one row per path (column ``mode``: direct, served): its median and per-round images/s
and mode / direct (P5 on the served row).

The weights are random (seeded): throughput does not depend on them. The served
answers are checked against the in-process ones (1e-5) before anything is timed.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from results_file import add_results_option, write_results

from cdul.core.classifier import SUPPORTED_ARCHS, build_classifier
from cdul.core.images import decode_image
from cdul.core.transforms import eval_transform
from cdul.serving.archive import build_archive
from cdul.serving.config import ClassifierConfig, load_classifier
from cdul.serving.local import LocalTorchServe
from cdul.world.generator import make_scene
from cdul.world.shapes import SHAPES

REPO = Path(__file__).resolve().parents[1]
TEST_CONFIG = REPO / "deploy" / "torchserve" / "config.test.properties"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="resnet18", choices=SUPPORTED_ARCHS)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--images", type=int, default=64, help="images per round")
    parser.add_argument("--source-size", type=int, default=384, help="side of the JPEGs sent")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-batch-delay", type=int, default=20, help="milliseconds")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="torch intra-op threads, the same in-process and in the TorchServe worker",
    )
    add_results_option(parser)
    return parser.parse_args(argv)


def make_images(count: int, size: int) -> list[bytes]:
    """World scenes (1-4 shapes on textured backgrounds) as JPEG bytes."""
    images = []
    for index in range(count):
        buffer = io.BytesIO()
        make_scene(0, index, stream="val", size=size).image.save(buffer, "JPEG", quality=90)
        images.append(buffer.getvalue())
    return images


class Direct:
    """The in-process path: decode, transform, batched forward, sigmoid."""

    def __init__(self, weights: Path, config: ClassifierConfig, batch_size: int) -> None:
        self.model = load_classifier(weights, config)
        self.transform = eval_transform(config.image_size, config.mean, config.std)
        self.batch_size = batch_size
        self.max_pixels = config.max_pixels

    def run(self, images: list[bytes]) -> list[list[float]]:
        out: list[list[float]] = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            batch = torch.stack(
                [self.transform(decode_image(b, max_pixels=self.max_pixels)) for b in chunk]
            )
            with torch.inference_mode():
                out.extend(torch.sigmoid(self.model(batch)).tolist())
        return out


def serve_all(
    server: LocalTorchServe, images: list[bytes], clients: int, classes: Sequence[str]
) -> list[list[float]]:
    """Post every image once from ``clients`` threads; the probabilities, in order."""
    headers = {**server.auth_headers("inference"), "Content-Type": "image/jpeg"}
    results: list[list[float] | None] = [None] * len(images)
    errors: list[str] = []
    next_index = iter(range(len(images)))
    lock = threading.Lock()

    def client() -> None:
        connection = http.client.HTTPConnection(server.host, server.inference_port, timeout=120)
        try:
            while True:
                with lock:
                    index = next(next_index, None)
                if index is None:
                    return
                connection.request("POST", "/predictions/cdul", images[index], headers)
                response = connection.getresponse()
                body = response.read()
                if response.status != 200:
                    errors.append(f"{response.status}: {body[:200]!r}")
                    return
                answer = json.loads(body)["probabilities"]
                results[index] = [answer[name] for name in classes]
        finally:
            connection.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors or any(r is None for r in results):
        raise RuntimeError(f"served requests failed: {errors[:3]}")
    return results  # type: ignore[return-value]


def timed(function: Callable[..., object], *args: object) -> float:
    """Seconds one call takes."""
    start = time.perf_counter()
    function(*args)
    return time.perf_counter() - start


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    classes = tuple(SHAPES)
    config = ClassifierConfig(arch=args.arch, classes=classes, image_size=args.image_size)
    images = make_images(args.images, args.source_size)
    batching = {
        "defaultVersion": True,
        "marName": "cdul.mar",
        "minWorkers": 1,
        "maxWorkers": 1,
        "batchSize": args.batch_size,
        "maxBatchDelay": args.max_batch_delay,
        "responseTimeout": 300,
    }
    with tempfile.TemporaryDirectory(prefix="cdul-p5-") as tmp:
        root = Path(tmp)
        torch.manual_seed(0)
        weights = root / "classifier.pt"
        torch.save(build_classifier(args.arch, len(classes)).state_dict(), weights)
        build_archive(weights, config, root / "store")
        direct = Direct(weights, config, args.batch_size)
        server = LocalTorchServe(
            root / "store",
            {"cdul": "cdul.mar"},
            root / "torchserve",
            base_config=TEST_CONFIG,
            overrides={"models": json.dumps({"cdul": {"1.0": batching}})},
            env={"OMP_NUM_THREADS": str(args.threads)},
        )
        with server:
            # Warm-up and correctness: every served answer equals the in-process one.
            expected = direct.run(images)
            served = serve_all(server, images, args.clients, classes)
            worst = max(
                abs(a - b)
                for e, s in zip(expected, served, strict=True)
                for a, b in zip(e, s, strict=True)
            )
            if worst > 1e-5:
                raise SystemExit(f"served and in-process answers differ by {worst:.2e}")
            rates: dict[str, list[float]] = {"direct": [], "served": []}
            for round_index in range(1, args.rounds + 1):
                seconds_direct = timed(direct.run, images)
                seconds_served = timed(serve_all, server, images, args.clients, classes)
                rates["direct"].append(len(images) / seconds_direct)
                rates["served"].append(len(images) / seconds_served)
                print(
                    f"round {round_index}: direct {rates['direct'][-1]:7.1f} img/s   "
                    f"served {rates['served'][-1]:7.1f} img/s"
                )
    direct_rate = statistics.median(rates["direct"])
    served_rate = statistics.median(rates["served"])
    print(
        f"P5 {args.arch} {args.image_size} px, {args.images} JPEGs of {args.source_size} px, "
        f"{args.clients} clients, batch {args.batch_size} / {args.max_batch_delay} ms, "
        f"1 worker, {args.threads} threads, max |served - direct| = {worst:.1e}"
    )
    print(
        f"P5 median: direct {direct_rate:.1f} img/s, TorchServe {served_rate:.1f} img/s, "
        f"ratio {served_rate / direct_rate:.2f} (goal >= 0.7)"
    )
    settings = {"arch": args.arch, "image_size": args.image_size, "images": args.images,
                "source_size": args.source_size, "clients": args.clients,
                "batch_size": args.batch_size, "max_batch_delay_ms": args.max_batch_delay,
                "workers": 1, "threads": args.threads, "max_abs_diff": f"{worst:.1e}"}  # fmt: skip
    rows = [{**settings, "mode": name, "images_per_s": round(statistics.median(values), 2),
             "rounds": " ".join(f"{v:.2f}" for v in values),
             "mode_over_direct": round(statistics.median(values) / direct_rate, 3)}
            for name, values in rates.items()]  # fmt: skip
    write_results(args.results, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
