"""Prometheus metrics of the similarity service, served on their own HTTP port."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ServiceMetrics:
    """One registry per server, so tests can run several servers in one process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "cdul_clip_requests",
            "RPCs answered (stream items count one each), by method and status code",
            ["method", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "cdul_clip_request_seconds",
            "Time to answer one RPC or stream item, by method",
            ["method"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "cdul_clip_batch_views",
            "Views (images + snippets) per encoder batch",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=self.registry,
        )
        self.images = Counter(
            "cdul_clip_images_encoded", "Whole images encoded", registry=self.registry
        )
        self.snippets = Counter(
            "cdul_clip_snippets_encoded", "Snippets encoded", registry=self.registry
        )
        self.queue_depth = Gauge(
            "cdul_clip_queue_views", "Views waiting for the encoder (after the last batch)",
            registry=self.registry, multiprocess_mode="livesum",
        )  # fmt: skip
        self.queue_full = Counter(
            "cdul_clip_queue_full", "Requests refused because the queue was full",
            registry=self.registry,
        )  # fmt: skip
