"""``cdul clip-serve --processes N``: N server processes on one port (SO_REUSEPORT).

Why: one Python process serialises each image's decode bookkeeping, protobuf, snippet
answers and the stream's threads on its GIL, about 1.3-1.6 ms per image measured with a
no-op encoder (``benchmarks/clip_service_request_side.py``): some 600 images/s at best,
whatever the device. N processes, each a complete server with its own model copy and
batcher, bind the same port with SO_REUSEPORT (gRPC's multiprocessing example); the
kernel spreads incoming *connections* over them, so a client needs one connection per
stream (``SimilarityClient`` opens one per stream).

This supervisor reserves the port (a bound, never-listening SO_REUSEPORT socket, so
``--port 0`` resolves once for all), starts the N children with the same settings, says
``SERVING on port P`` once every child does, and serves their merged Prometheus
metrics on the metrics port (prometheus_client's multiprocess mode: every child
writes its samples under one directory). SIGTERM goes to every child (each drains as
a single server does); a child that dies stops the others and the supervisor exits 1,
so Kubernetes restarts the pod whole.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import fields
from pathlib import Path

from cdul.clip_service.launch import CDUL, READY, ClipServiceStartError
from cdul.clip_service.server import ServerConfig

log = logging.getLogger(__name__)
# Given to the children as flags (not through the settings file: paths stay paths).
_AS_FLAGS = ("tls_cert", "tls_key", "port", "metrics_port", "processes", "limits")


def reserve_port(host: str, port: int) -> socket.socket:
    """A bound SO_REUSEPORT socket holding ``port`` (0: a free one) for the children."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise ClipServiceStartError(f"cannot bind {host}:{port}: {error.strerror}") from None
    return sock


def child_command(config: ServerConfig, port: int, settings_file: Path) -> list[str]:
    settings = {f.name: getattr(config, f.name) for f in fields(config)
                if f.name not in _AS_FLAGS}  # fmt: skip
    settings_file.write_text(json.dumps(settings), encoding="utf-8")
    command = [CDUL, "clip-serve", "--config", str(settings_file), "--processes", "1",
               "--port", str(port), "--metrics-port", "-1",
               "--max-snippets", str(config.limits.max_snippets),
               "--max-pixels", str(config.limits.max_pixels)]  # fmt: skip
    if config.tls_cert and config.tls_key:
        command += ["--tls-cert", str(config.tls_cert), "--tls-key", str(config.tls_key)]
    return command


class ProcessGroup:
    """The children, started together, stopped together."""

    def __init__(self, config: ServerConfig, start_timeout_s: float = 600.0) -> None:
        self.config = config
        self.start_timeout_s = start_timeout_s
        self._scratch = tempfile.TemporaryDirectory(prefix="cdul-clip-serve-")
        self.metrics_dir = Path(self._scratch.name, "metrics")
        self.metrics_dir.mkdir()
        self._socket = reserve_port(config.host, config.port)
        self.port = self._socket.getsockname()[1]
        self.children: list[subprocess.Popen[str]] = []
        self.metrics_port: int | None = None

    def start(self) -> ProcessGroup:
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir)}
        command = child_command(self.config, self.port, Path(self._scratch.name, "config.json"))
        for _ in range(self.config.processes):
            self.children.append(subprocess.Popen(command, stdout=subprocess.PIPE, text=True,
                                                  env=env))  # fmt: skip
        try:
            self._wait_until_serving()
            if self.config.metrics_port is not None:
                self._serve_metrics()
        except BaseException:
            self.stop(grace_s=5.0)
            raise
        return self

    def _wait_until_serving(self) -> None:
        waiting = {child.stdout.fileno(): child for child in self.children if child.stdout}
        deadline = time.monotonic() + self.start_timeout_s
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ClipServiceStartError(
                    f"{len(waiting)} of {len(self.children)} clip-serve processes did not "
                    f"serve within {self.start_timeout_s:.0f} s"
                )
            ready, _, _ = select.select(list(waiting), [], [], min(left, 1.0))
            for fd in ready:
                child = waiting[fd]
                line = child.stdout.readline() if child.stdout else ""
                if READY in line:
                    del waiting[fd]
                elif not line and child.poll() is not None:
                    raise ClipServiceStartError(
                        f"a clip-serve process exited with code {child.returncode} while "
                        "starting; its log is above"
                    )
        # Their stdout is not read from here on; nothing more is written to it.

    def _serve_metrics(self) -> None:
        from prometheus_client import CollectorRegistry, multiprocess, start_http_server

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(self.metrics_dir))
        server, _ = start_http_server(self.config.metrics_port, addr=self.config.host,
                                      registry=registry)  # fmt: skip
        self._metrics_http = server
        self.metrics_port = server.server_port

    def wait(self, stop: threading.Event) -> int:
        """Until ``stop`` is set (0) or a child dies (1, after stopping the others)."""
        while not stop.wait(0.5):
            for index, child in enumerate(self.children):
                if child.poll() is not None:
                    log.error("clip-serve process %d (pid %d) exited with code %d; stopping "
                              "the others", index, child.pid, child.returncode)  # fmt: skip
                    self.stop()
                    return 1
        self.stop()
        return 0

    def stop(self, grace_s: float | None = None) -> None:
        """SIGTERM to every child (each drains), SIGKILL after the grace period."""
        grace = self.config.grace_s if grace_s is None else grace_s
        for child in self.children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace + 5.0
        for child in self.children:
            try:
                child.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        if getattr(self, "_metrics_http", None) is not None:
            self._metrics_http.shutdown()
        self._socket.close()
        self._scratch.cleanup()


def serve_processes(config: ServerConfig) -> int:
    """Run ``config.processes`` servers until SIGTERM / Ctrl-C; the exit code."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    group = ProcessGroup(config).start()
    print(f"cdul clip-serve: {READY} {group.port} (metrics port {group.metrics_port}, "
          f"{config.processes} processes)", flush=True)  # fmt: skip
    return group.wait(stop)
