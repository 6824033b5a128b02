"""``cdul clip-serve``: run the CLIP similarity gRPC server until SIGTERM / Ctrl-C."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from cdul.clip_service.servicer import Limits


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="RN50", help="open_clip model name (default RN50)")
    parser.add_argument(
        "--pretrained",
        default="openai",
        help="open_clip tag or a local checkpoint path; 'none' for random weights",
    )
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=51000)
    parser.add_argument("--metrics-port", type=int, default=9100, help="Prometheus; -1 disables")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda:N")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    parser.add_argument(
        "--preprocess",
        default="auto",
        choices=["auto", "pil", "tensor"],
        help="pil: open_clip's exact transform per view; tensor: batched crop+resize on the "
        "device (auto: tensor on CUDA, pil on CPU)",
    )
    parser.add_argument(
        "--preprocess-in",
        default="auto",
        choices=["auto", "requests", "batcher"],
        help="where views are preprocessed: request threads (overlaps a GPU's forward) or the "
        "batcher's worker between forwards (a CPU encoder needs every core); auto: batcher on "
        "CPU, requests on CUDA",
    )
    parser.add_argument("--max-batch", type=int, default=64, help="views per encoder forward")
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="batch fill wait")
    parser.add_argument("--max-queue-views", type=int, default=8192, help="then RESOURCE_EXHAUSTED")
    parser.add_argument("--max-snippets", type=int, default=4096, help="per request")
    parser.add_argument("--max-pixels", type=int, default=50_000_000, help="per image")
    parser.add_argument("--workers", type=int, default=16, help="RPC threads")
    parser.add_argument("--grace", type=float, default=30.0, help="seconds to drain on SIGTERM")
    parser.add_argument("--tls-cert", type=Path, default=None)
    parser.add_argument("--tls-key", type=Path, default=None)


def run(args: argparse.Namespace) -> int:
    from cdul.clip_service.launch import READY
    from cdul.clip_service.server import ServerConfig, SimilarityServer

    config = ServerConfig(
        model=args.model,
        pretrained=None if args.pretrained.lower() == "none" else args.pretrained,
        host=args.host,
        port=args.port,
        metrics_port=None if args.metrics_port < 0 else args.metrics_port,
        device=args.device,
        precision=args.precision,
        preprocess=args.preprocess,
        preprocess_in=args.preprocess_in,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_queue_views=args.max_queue_views,
        workers=args.workers,
        grace_s=args.grace,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        limits=Limits(max_pixels=args.max_pixels, max_snippets=args.max_snippets),
    )
    server = SimilarityServer(config)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    print(f"cdul clip-serve: {READY} {server.port} (metrics port {server.metrics_port})",
          flush=True)  # fmt: skip
    stop.wait()
    server.stop()
    return 0
