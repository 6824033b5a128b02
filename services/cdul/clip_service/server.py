"""Assembling and running the similarity server: model, batcher, gRPC, health, metrics.

Start-up order matters to Kubernetes: the gRPC port (with the health service saying
NOT_SERVING) and the metrics port come up first, then the model loads, then health
turns SERVING. On SIGTERM health turns NOT_SERVING, the server stops taking RPCs and
gives in-flight ones ``grace_s`` to finish while the batcher keeps encoding.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from cdul._proto.cdul.similarity.v1 import similarity_pb2 as pb
from cdul._proto.cdul.similarity.v1 import similarity_pb2_grpc as pb_grpc
from cdul.clip_service.batcher import DynamicBatcher, single_threaded_torch
from cdul.clip_service.metrics import ServiceMetrics
from cdul.clip_service.servicer import Limits, SimilarityServicer
from cdul.core.clip_models import create_clip
from cdul.core.clip_scoring import ClipScorer
from cdul.core.errors import ConfigError
from cdul.core.settings import setting

log = logging.getLogger(__name__)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Similarity"].full_name


PREPROCESS_IN = ("requests", "batcher")


@dataclass(frozen=True)
class ServerConfig:
    model: str = setting("RN50", "open_clip model name")
    pretrained: str | None = setting(
        "openai", "open_clip tag or a local checkpoint path; 'none' for random weights"
    )
    host: str = setting("0.0.0.0", "address to listen on")
    port: int = setting(51000, "gRPC port")
    metrics_port: int | None = setting(9100, "Prometheus port; -1 disables")
    device: str = setting("auto", "auto (CUDA when present), cpu, cuda:N")
    precision: str = setting("auto", "auto: fp16 on CUDA, fp32 on CPU",
                             choices=("auto", "fp32", "fp16", "bf16"))  # fmt: skip
    preprocess: str = setting(
        "auto",
        "pil: open_clip's exact transform per view; tensor: batched crop+resize on the "
        "device (auto: tensor on CUDA, pil on CPU)",
        choices=("auto", "pil", "tensor"),
    )
    # Where views are preprocessed: "requests" (request threads, overlapping the device's
    # forward), "batcher" (the batcher's worker, between forwards: on a CPU the encoder
    # needs every core), or auto: batcher on CPU, requests on CUDA.
    preprocess_in: str = setting(
        "auto",
        "where views are preprocessed: request threads (overlaps a GPU's forward) or the "
        "batcher's worker between forwards (a CPU encoder needs every core); auto: batcher "
        "on CPU, requests on CUDA",
        choices=("auto", "requests", "batcher"),
    )
    max_batch: int = setting(64, "views per encoder forward")
    max_wait_ms: float = setting(5.0, "batch fill wait")
    max_queue_views: int = setting(8192, "views queued before RESOURCE_EXHAUSTED")
    workers: int = setting(16, "RPC threads")
    processes: int = setting(
        1, "server processes sharing the port (SO_REUSEPORT), each with its own model copy "
        "and batcher: one process serialises the request side on its GIL (~600 images/s "
        "at best), so feed a GPU with several",
    )  # fmt: skip
    max_message_mb: int = 32
    grace_s: float = setting(30.0, "seconds to drain on SIGTERM", flag="--grace")
    tls_cert: Path | None = setting(None, "TLS certificate (PEM)", type=Path)
    tls_key: Path | None = setting(None, "TLS private key (PEM)", type=Path)
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        at_least_one = {"max-batch": self.max_batch, "max-queue-views": self.max_queue_views,
                        "workers": self.workers, "max_message_mb": self.max_message_mb,
                        "processes": self.processes}  # fmt: skip
        for name, value in at_least_one.items():
            if value < 1:
                raise ConfigError(f"--{name} must be >= 1, got {value}")
        if self.max_wait_ms < 0 or self.grace_s < 0:
            raise ConfigError("--max-wait-ms and --grace must be >= 0")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port must be within 0..65535 (0: any free one), got {self.port}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("--tls-cert and --tls-key go together: give both or neither")
        if self.preprocess_in not in ("auto", *PREPROCESS_IN):
            raise ConfigError(
                f"--preprocess-in must be auto or one of {PREPROCESS_IN}, "
                f"got {self.preprocess_in!r}"
            )


def resolve_device(device: str, precision: str, preprocess: str) -> tuple[str, str, str]:
    """Fill in the ``auto`` settings: CUDA when present, fp16 and tensor preprocessing there."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    cuda = device.startswith("cuda")
    if precision == "auto":
        precision = "fp16" if cuda else "fp32"
    if precision != "fp32" and not cuda:
        raise ConfigError(f"precision {precision} needs a CUDA device; this one is {device}")
    if preprocess == "auto":
        preprocess = "tensor" if cuda else "pil"
    return device, precision, preprocess


class SimilarityServer:
    """A running server; ``stop()`` (or SIGTERM via :func:`serve`) shuts it down."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.device, self.precision, self.preprocess = resolve_device(
            config.device, config.precision, config.preprocess
        )
        self.preprocess_in = config.preprocess_in
        if self.preprocess_in == "auto":
            self.preprocess_in = "batcher" if self.device == "cpu" else "requests"
        self.metrics = ServiceMetrics()
        limit = config.max_message_mb * 1024 * 1024
        self.grpc_server = grpc.server(
            ThreadPoolExecutor(
                max_workers=config.workers,
                thread_name_prefix="clip-rpc",
                initializer=single_threaded_torch,
            ),
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                # Several processes may serve one port (--processes; the kernel spreads
                # connections over them).
                ("grpc.so_reuseport", 1),
            ],
        )
        # Registered before start (gRPC takes no handlers after it); answers UNAVAILABLE
        # until the model has loaded.
        self.gate = _LoadingGate()
        pb_grpc.add_SimilarityServicer_to_server(self.gate, self.grpc_server)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc_server)
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME),
            self.grpc_server,
        )  # fmt: skip
        address = f"{config.host}:{config.port}"
        if config.tls_cert and config.tls_key:
            credentials = grpc.ssl_server_credentials(
                [(config.tls_key.read_bytes(), config.tls_cert.read_bytes())]
            )
            self.port = self.grpc_server.add_secure_port(address, credentials)
        else:
            self.port = self.grpc_server.add_insecure_port(address)
        self.batcher: DynamicBatcher | None = None
        self.metrics_port: int | None = None
        self._stopped = threading.Event()

    def start(self) -> SimilarityServer:
        """Listen (health NOT_SERVING), load the model, then turn SERVING."""
        if self.config.metrics_port is not None:
            server, _ = start_http_server(
                self.config.metrics_port, addr=self.config.host, registry=self.metrics.registry
            )
            self.metrics_port = server.server_port
            self._metrics_http = server
        self.grpc_server.start()
        log.info("listening on %s:%d; loading %s (%s)", self.config.host, self.port,
                 self.config.model, self.config.pretrained)  # fmt: skip
        # The batcher's worker is the one thread that runs torch (see batcher.py): the
        # model loads there too.
        scorer: ClipScorer | None = None

        def encode(pixels: torch.Tensor) -> torch.Tensor:
            return scorer.encode(pixels, batch_size=self.config.max_batch)

        self.batcher = DynamicBatcher(
            encode,
            max_batch=self.config.max_batch,
            max_wait_ms=self.config.max_wait_ms,
            max_queue_views=self.config.max_queue_views,
            on_batch=self._on_batch,
        )

        def load() -> ClipScorer:
            clip = create_clip(self.config.model, self.config.pretrained, self.device,
                               self.precision)  # fmt: skip
            return ClipScorer(clip, self.device, self.preprocess)

        try:
            scorer = self.batcher.call(load).result()
        except BaseException:
            self.batcher.close()
            raise
        servicer = SimilarityServicer(
            scorer,
            self.batcher,
            self.metrics,
            self.config.limits,
            self.device,
            self.precision,
            preprocess_in_batcher=self.preprocess_in == "batcher",
        )
        self.gate.target = servicer
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("SERVING %s on port %d (device %s, %s, %s preprocessing in the %s)",
                 scorer.clip.name, self.port, self.device, self.precision, self.preprocess,
                 self.preprocess_in)  # fmt: skip
        return self

    def _on_batch(self, views: int) -> None:
        # Set here rather than read on scrape: with --processes the metrics are merged
        # from files the processes write, and a gauge only lands there when set.
        self.metrics.batch_size.observe(views)
        if self.batcher is not None:
            self.metrics.queue_depth.set(self.batcher.queued_views)

    def stop(self, grace_s: float | None = None) -> None:
        """NOT_SERVING, refuse new RPCs, let accepted ones finish, stop the batcher."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.health.enter_graceful_shutdown()
        grace = self.config.grace_s if grace_s is None else grace_s
        self.grpc_server.stop(grace).wait()
        if self.batcher is not None:
            self.batcher.close(timeout=grace)
        if getattr(self, "_metrics_http", None) is not None:
            self._metrics_http.shutdown()

    def wait(self) -> None:
        self.grpc_server.wait_for_termination()


class _LoadingGate(pb_grpc.SimilarityServicer):
    """Forwards every RPC to the real servicer once it exists."""

    def __init__(self) -> None:
        self.target: SimilarityServicer | None = None

    def _ready(self, context: grpc.ServicerContext) -> SimilarityServicer:
        if self.target is None:
            context.abort(grpc.StatusCode.UNAVAILABLE, "the CLIP model is still loading")
        return self.target

    def GetModelInfo(self, request, context):
        return self._ready(context).GetModelInfo(request, context)

    def GlobalSimilarity(self, request, context):
        return self._ready(context).GlobalSimilarity(request, context)

    def SnippetSimilarity(self, request, context):
        return self._ready(context).SnippetSimilarity(request, context)

    def ScoreStream(self, request_iterator, context):
        return self._ready(context).ScoreStream(request_iterator, context)

    def TextEmbeddings(self, request, context):
        return self._ready(context).TextEmbeddings(request, context)
