"""``cdul clip-serve``: run the CLIP similarity gRPC server until SIGTERM / Ctrl-C."""

from __future__ import annotations

import argparse
import signal
import threading
from dataclasses import replace

from cdul.clip_service.server import ServerConfig, SimilarityServer
from cdul.clip_service.servicer import Limits
from cdul.core.settings import add_flags, from_args


def configure(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, ServerConfig)
    limits = Limits()
    parser.add_argument("--max-snippets", type=int, default=limits.max_snippets,
                        help="snippets per request (default: %(default)s)")  # fmt: skip
    parser.add_argument("--max-pixels", type=int, default=limits.max_pixels,
                        help="pixels per image (default: %(default)s)")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from cdul.clip_service.launch import READY

    config = from_args(
        ServerConfig,
        args,
        limits=Limits(max_pixels=args.max_pixels, max_snippets=args.max_snippets),
    )
    # The command line's spellings of "none": --pretrained none, --metrics-port -1.
    pretrained, metrics_port = config.pretrained, config.metrics_port
    config = replace(
        config,
        pretrained=None if pretrained is None or pretrained.lower() == "none" else pretrained,
        metrics_port=None if metrics_port is None or metrics_port < 0 else metrics_port,
    )
    if config.processes > 1:
        from cdul.clip_service.processes import serve_processes

        return serve_processes(config)
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
