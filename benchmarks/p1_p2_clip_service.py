"""P1 and P2: the similarity service against the bare encoder and against a naive client.

Measured side by side in one run on the same images (world scenes), snippet spec and
batch size:

- bare:    in-process, no gRPC: views (image + grid snippets) -> preprocess -> encode
           in batches of --max-batch -> Eq. 1-5. The ceiling.
- service: the labeler's path: ScoreStream over a real gRPC server on loopback with
           the dynamic batcher, --in-flight requests in flight.
- naive:   one RPC and one forward per view: the client crops each snippet, encodes it
           as PNG and sends it alone with GlobalSimilarity.

P1 = service / bare (goal >= 0.85); P2 = service / naive (goal >= 8).

    .venv/bin/python benchmarks/p1_p2_clip_service.py --images 200
"""

from __future__ import annotations

import argparse
import io
import time

import torch

from cdul.clip_service.client import SimilarityClient, label_set_ref
from cdul.clip_service.server import ServerConfig, SimilarityServer
from cdul.core.clip_models import create_clip
from cdul.core.clip_scoring import ClipScorer, LabelSet
from cdul.core.images import decode_image
from cdul.core.method.snippets import crop_snippets, parse_snippet_spec
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
    parser.add_argument("--spec", default="grid:3x3")
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--in-flight", type=int, default=32)
    args = parser.parse_args()

    checkpoint = str(ensure_tiny_clip())
    spec = parse_snippet_spec(args.spec)
    scenes = [make_scene(9, i, stream="test").image for i in range(args.images)]
    encoded = [(str(i), png(s)) for i, s in enumerate(scenes)]
    labels = LabelSet(tuple(SHAPES))
    threads = torch.get_num_threads()
    print(f"torch threads {threads}, {args.images} images, {spec}, batch {args.max_batch}")

    scorer = ClipScorer(create_clip(MODEL_NAME, checkpoint))
    text = scorer.text_embeddings(labels)
    start = time.perf_counter()
    # Same work as the server per image: decode once, cut, preprocess, encode, score.
    for _, data in encoded:
        image = decode_image(data)
        pixels = scorer.view_pixels(image, spec)
        scorer.score_views(scorer.encode(pixels, args.max_batch), text)
    bare = args.images / (time.perf_counter() - start)

    config = ServerConfig(
        model=MODEL_NAME,
        pretrained=checkpoint,
        host="127.0.0.1",
        port=0,
        metrics_port=None,
        max_batch=args.max_batch,
    )
    server = SimilarityServer(config)
    server.start()
    try:
        with SimilarityClient([f"127.0.0.1:{server.port}"]) as client:
            ref = label_set_ref(SHAPES)
            list(client.score_stream(encoded[:10], ref, str(spec)))  # warm-up
            start = time.perf_counter()
            answers = list(
                client.score_stream(encoded, ref, str(spec), max_in_flight=args.in_flight)
            )
            service = args.images / (time.perf_counter() - start)
            assert len(answers) == args.images and not any(a.error for a in answers)

            start = time.perf_counter()
            for image in scenes[: args.naive_images]:
                for view in [image, *crop_snippets(image, spec)]:
                    client.global_similarity([("v", png(view))], ref)
            naive = args.naive_images / (time.perf_counter() - start)
    finally:
        server.stop(grace_s=1.0)

    print(f"{'path':<10}{'images/s':>10}")
    for name, value in (("bare", bare), ("service", service), ("naive", naive)):
        print(f"{name:<10}{value:>10.1f}")
    print(f"P1 service/bare  = {service / bare:.2f}  (goal >= 0.85)")
    print(f"P2 service/naive = {service / naive:.2f}  (goal >= 8)")


if __name__ == "__main__":
    main()
