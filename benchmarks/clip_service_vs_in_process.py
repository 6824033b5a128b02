"""The CLIP similarity service against the in-process encoder and a naive client (P1, P2).

Measured side by side in one run on the same images (world scenes), snippet spec and
batch size:

- loop:    the bare encoder in-process, no gRPC: decode each image, crop, preprocess,
           encode the views of --in-flight images in batches of --max-batch, Eq. 1-5.
- bare:    (for reference) the encoder alone on views preprocessed beforehand: the
           ceiling of the encoder, without decode or preprocessing.
- service: the labeler's path: ScoreStream to `cdul clip-serve` in its own process on
           loopback (dynamic batcher), --in-flight requests in flight.
- naive:   one RPC and one forward per view: the client crops each snippet, encodes it
           as PNG and sends it alone with GlobalSimilarity.
- busy:    (for reference) the loop again while another process keeps one core busy
           --busy-fraction of the time: what any out-of-process service costs the
           encoder's OpenMP threads on a small machine, before doing any work of its own.

The README's P1 and P2 figures: P1 = service / loop (goal >= 0.85); P2 = service / naive
(goal >= 8). The machine's cores are shared by client and server, as they are by the
in-process loop. ``--results FILE.csv`` writes one row per path (column ``mode``): its
median images/s, every round's, and service / mode (P1 on the loop's row, P2 on naive's).

    .venv/bin/python benchmarks/clip_service_vs_in_process.py --images 200
"""

from __future__ import annotations

import argparse
import io
import statistics
import subprocess
import sys
import time

import torch
from results_file import add_results_option, write_results

from cdul.clip_service import launch
from cdul.clip_service.client import SimilarityClient, label_set_ref
from cdul.core.clip_models import create_clip
from cdul.core.clip_scoring import ClipScorer
from cdul.core.images import decode_image
from cdul.core.label_set import LabelSet
from cdul.core.method.snippets import DEFAULT_SNIPPET_SPEC, crop_snippets, parse_snippet_spec
from cdul.world.generator import make_scene
from cdul.world.shapes import SHAPES
from cdul.world.tiny_clip import MODEL_NAME, ensure_tiny_clip


def png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--naive-images", type=int, default=40)
    parser.add_argument("--spec", default=DEFAULT_SNIPPET_SPEC)
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--in-flight", type=int, default=32)
    parser.add_argument(
        "--preprocess",
        default="pil",
        choices=["pil", "tensor"],
        help="CLIP preprocessing, the same in-process and in the service",
    )
    parser.add_argument(
        "--preprocess-in",
        default="auto",
        choices=["auto", "requests", "batcher"],
        help="the service's --preprocess-in (auto: batcher on a CPU)",
    )
    parser.add_argument(
        "--busy-fraction",
        type=float,
        default=0.2,
        help="share of one core the 'busy' path's other process takes (0: skip that path)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians kept")
    add_results_option(parser)
    args = parser.parse_args()

    checkpoint = str(ensure_tiny_clip())
    spec = parse_snippet_spec(args.spec)
    scenes = [make_scene(9, i, stream="test").image for i in range(args.images)]
    encoded = [(str(i), png(s)) for i, s in enumerate(scenes)]
    labels = LabelSet(tuple(SHAPES))
    threads = torch.get_num_threads()
    print(f"torch threads {threads}, {args.images} images, {spec}, batch {args.max_batch}, "
          f"{args.preprocess} preprocessing")  # fmt: skip

    scorer = ClipScorer(create_clip(MODEL_NAME, checkpoint), preprocessor=args.preprocess)
    text = scorer.text_embeddings(labels)
    pixels = [scorer.view_pixels(decode_image(data), spec) for _, data in encoded]

    def bare() -> float:
        # The encoder alone on every view (preprocessed beforehand), batches of --max-batch,
        # then Eq. 1-5: the ceiling the service's decode/crop/gRPC/batching overhead eats into.
        start = time.perf_counter()
        embeddings = scorer.encode(torch.cat(pixels), args.max_batch)
        for chunk in embeddings.split([len(p) for p in pixels]):
            scorer.score_views(chunk, text)
        return args.images / (time.perf_counter() - start)

    def loop() -> float:
        # The same work in-process on one thread, decode and preprocessing included.
        start = time.perf_counter()
        for i in range(0, len(encoded), args.in_flight):
            images = [decode_image(data) for _, data in encoded[i : i + args.in_flight]]
            scorer.score(images, labels, spec, batch_size=args.max_batch)
        return args.images / (time.perf_counter() - start)

    def busy() -> float:
        # Another process spins --busy-fraction of every 5 ms, as the server's gRPC, decode
        # and answer threads take ~0.2 of a core beside its encoder.
        spin, period = args.busy_fraction * 0.005, 0.005
        code = (f"import time\nwhile True:\n    t = time.perf_counter()\n"
                f"    while time.perf_counter() - t < {spin}: pass\n"
                f"    time.sleep({period - spin})")  # fmt: skip
        other = subprocess.Popen([sys.executable, "-c", code])
        try:
            time.sleep(0.2)
            return loop()
        finally:
            other.kill()
            other.wait()

    paths = [("bare", bare), ("loop", loop), ("service", None)]
    if args.busy_fraction > 0:
        paths.append(("busy", busy))

    # The service runs in its own process, as it does for the labeler.
    server, port = launch.spawn(
        ["--model", MODEL_NAME, "--pretrained", checkpoint, "--metrics-port", "-1",
         "--max-batch", str(args.max_batch), "--preprocess", args.preprocess,
         "--preprocess-in", args.preprocess_in],
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    results: dict[str, list[float]] = {name: [] for name, _ in paths}
    try:
        with SimilarityClient([f"127.0.0.1:{port}"]) as client:
            ref = label_set_ref(SHAPES)

            def service() -> float:
                start = time.perf_counter()
                stream = client.score_stream(encoded, ref, str(spec), max_in_flight=args.in_flight)
                answers = list(stream)
                assert len(answers) == args.images and not any(a.error for a in answers)
                return args.images / (time.perf_counter() - start)

            list(client.score_stream(encoded[:10], ref, str(spec)))  # warm-up
            bare(), loop()  # warm-up
            for _ in range(args.rounds):
                for name, measure in paths:
                    results[name].append((measure or service)())

            start = time.perf_counter()
            for image in scenes[: args.naive_images]:
                for view in [image, *crop_snippets(image, spec)]:
                    client.global_similarity([("v", png(view))], ref)
            naive = args.naive_images / (time.perf_counter() - start)
    finally:
        launch.stop(server)

    medians = {name: statistics.median(values) for name, values in results.items()}
    medians["naive"] = naive
    settings = {"threads": threads, "images": args.images, "naive_images": args.naive_images,
                "spec": str(spec), "max_batch": args.max_batch, "in_flight": args.in_flight,
                "preprocess": args.preprocess, "preprocess_in": args.preprocess_in}  # fmt: skip
    rows = []
    print(f"{'path':<10}{'images/s':>10}   rounds")
    for name, value in medians.items():
        rounds = results.get(name, [naive])
        print(f"{name:<10}{value:>10.1f}   " + " ".join(f"{v:.1f}" for v in rounds))
        rows.append({**settings, "mode": name, "images_per_s": round(value, 2),
                     "rounds": " ".join(f"{v:.2f}" for v in rounds),
                     "service_over_mode": round(medians["service"] / value, 3)})  # fmt: skip
    print(f"P1 service/loop  = {medians['service'] / medians['loop']:.2f}  (goal >= 0.85)")
    print(f"   service/bare  = {medians['service'] / medians['bare']:.2f}  (encoder-only ceiling)")
    if "busy" in medians:
        print(f"   busy/loop     = {medians['busy'] / medians['loop']:.2f}  (the loop beside a "
              f"process taking {args.busy_fraction:.0%} of a core)")  # fmt: skip
    print(f"P2 service/naive = {medians['service'] / naive:.2f}  (goal >= 8)")
    write_results(args.results, rows)


if __name__ == "__main__":
    main()
