"""GPU throughput of the similarity service: RN50 on VOC-sized images, grid 3x3 and patch 16.

For when a GPU machine is at hand. The study spent 41 hours on 16-px patches of VOC2012's
5,717 training images on a V100. This script measures, per precision (fp32, bf16) and
snippet spec, images/s through the labeler's path (``cdul clip-serve --processes N`` in
its own processes, ScoreStream over gRPC on loopback with 2 streams per server process,
dynamic batcher, server-side decode + crop) and the bare encoder's views/s on the same
views already on the device (same model, precision and batch, measured in this
process), their ratio, and the wall time for 5,717 images. RN50 with random weights
(speed does not depend on the weights). Images: world scenes resized to 500x375 JPEGs.

``--results FILE.csv`` writes one row per precision, preprocessing and spec (name the file
by hardware and precision, as ``benchmarks/results/clip_service_h200_bf16_fp32.csv``).

    python benchmarks/clip_service_gpu.py --precisions bf16 --preprocessors tensor \
        --processes 4 --results benchmarks/results/clip_service_h200_bf16_p4.csv
"""

from __future__ import annotations

import argparse
import io
import time

import torch
from results_file import add_results_option, write_results

from cdul.clip_service import launch
from cdul.clip_service.client import SimilarityClient, label_set_ref
from cdul.clip_service.server import resolve_device
from cdul.core.clip_models import create_clip
from cdul.core.clip_scoring import ClipScorer
from cdul.core.images import decode_image
from cdul.core.method.snippets import DEFAULT_SNIPPET_SPEC, parse_snippet_spec
from cdul.world.generator import make_scene

VOC_TRAIN_IMAGES = 5717
VOC_CLASSES = 20


def voc_sized_images(count: int) -> list[tuple[str, bytes]]:
    out = []
    for i in range(count):
        buffer = io.BytesIO()
        make_scene(11, i, stream="test").image.resize((500, 375)).save(buffer, "JPEG", quality=90)
        out.append((f"img{i:05d}", buffer.getvalue()))
    return out


def bare_encoder_views_per_s(args, precision: str, preprocess: str, spec, image) -> float:
    """The encoder alone, in this process, on one image's views repeated to full batches,
    already on the device (the ceiling the service is measured against)."""
    device, precision, preprocess = resolve_device(args.device, precision, preprocess)
    scorer = ClipScorer(create_clip(args.model, None, device, precision), device, preprocess)
    pixels = scorer.view_pixels(decode_image(image), spec).to(device)
    batch = pixels.repeat(max(1, 8 * args.max_batch // len(pixels)), 1, 1, 1)
    scorer.encode(batch[: args.max_batch], args.max_batch)  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    scorer.encode(batch, args.max_batch)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return batch.shape[0] / (time.perf_counter() - start)


def measure(args, precision: str, preprocess: str, spec_text: str, images) -> dict:
    spec = parse_snippet_spec(spec_text)
    server, port = launch.spawn([
        "--model", args.model, "--pretrained", "none", "--device", args.device,
        "--precision", precision, "--preprocess", preprocess, "--max-batch",
        str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms), "--max-queue-views",
        str(1 << 20), "--workers", str(args.workers), "--metrics-port", "-1",
        "--processes", str(args.processes), "--max-snippets", "1000",
    ])  # fmt: skip
    try:
        labels = label_set_ref([f"class {k}" for k in range(VOC_CLASSES)])
        with SimilarityClient([f"127.0.0.1:{port}"], deadline_s=600,
                              streams_per_endpoint=2 * args.processes) as client:  # fmt: skip
            list(client.score_stream(images[:32], labels, spec_text, max_in_flight=4))  # warm-up
            start = time.perf_counter()
            answers = list(
                client.score_stream(images, labels, spec_text, max_in_flight=args.in_flight)
            )
            service_s = time.perf_counter() - start
        assert len(answers) == len(images) and not any(a.error for a in answers)
    finally:
        launch.stop(server, grace_s=10)
    views = spec.forwards(spec.count(500, 375))
    service_ips = len(images) / service_s
    encoder_vps = bare_encoder_views_per_s(args, precision, preprocess, spec, images[0][1])
    return {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "model": args.model,
        "precision": precision,
        "preprocess": preprocess,
        "spec": spec_text,
        "processes": args.processes,
        "views_per_image": views,
        "images": len(images),
        "service_images_per_s": round(service_ips, 2),
        "service_views_per_s": round(service_ips * views, 1),
        "encoder_views_per_s": round(encoder_vps, 1),
        "service_over_encoder": round(service_ips * views / encoder_vps, 3),
        "projected_voc_train_minutes": round(VOC_TRAIN_IMAGES / service_ips / 60, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="RN50")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--preprocessors", nargs="+", default=["tensor", "pil"])
    parser.add_argument("--grid-images", type=int, default=400)
    parser.add_argument("--patch-images", type=int, default=24)
    parser.add_argument("--max-batch", type=int, default=256)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--workers", type=int, default=32)
    parser.add_argument("--processes", type=int, default=4, help="clip-serve --processes")
    add_results_option(parser)
    args = parser.parse_args()

    images = voc_sized_images(max(args.grid_images, args.patch_images))
    rows = []
    for precision in args.precisions:
        for preprocess in args.preprocessors:
            for spec, count in (
                (DEFAULT_SNIPPET_SPEC, args.grid_images),
                ("patch:16", args.patch_images),
            ):
                row = measure(args, precision, preprocess, spec, images[:count])
                rows.append(row)
                print(row, flush=True)
    header = list(rows[0])
    print("\n" + " | ".join(header))
    for row in rows:
        print(" | ".join(str(row[k]) for k in header))
    write_results(args.results, rows)


if __name__ == "__main__":
    main()
