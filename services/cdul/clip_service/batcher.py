"""A dynamic batcher: packs the views of concurrent requests into one encoder forward.

Request threads submit the preprocessed views of one image (the whole image and its
snippets) and wait on a future. One worker thread takes the oldest job, then keeps
taking jobs until ``max_batch`` views are gathered or ``max_wait_ms`` has passed since
the first, runs the encoder once per ``max_batch`` views, and hands each job its rows.
The queue is bounded in views: a submit that would exceed ``max_queue_views`` fails at
once with :class:`QueueFullError`, which the server answers as RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

import torch


class QueueFullError(RuntimeError):
    """The batcher's queue holds too many views; the caller should back off."""


class BatcherClosedError(RuntimeError):
    """The batcher is shutting down and takes no new work."""


@dataclass
class _Job:
    pixels: torch.Tensor
    future: Future[torch.Tensor]


class DynamicBatcher:
    def __init__(
        self,
        encode: Callable[[torch.Tensor], torch.Tensor],
        max_batch: int = 64,
        max_wait_ms: float = 5.0,
        max_queue_views: int = 8192,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        if max_batch < 1 or max_queue_views < 1 or max_wait_ms < 0:
            raise ValueError("max_batch and max_queue_views must be >= 1, max_wait_ms >= 0")
        self._encode = encode
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_queue_views = max_queue_views
        self._on_batch = on_batch
        self._jobs: collections.deque[_Job] = collections.deque()
        self._queued_views = 0
        self._cond = threading.Condition()
        self._closed = False
        self._worker = threading.Thread(target=self._run, name="clip-batcher", daemon=True)
        self._worker.start()

    @property
    def queued_views(self) -> int:
        return self._queued_views

    def submit(self, pixels: torch.Tensor) -> Future[torch.Tensor]:
        """Queue ``(n, 3, H, W)`` pixels; the future resolves to ``(n, D)`` embeddings."""
        future: Future[torch.Tensor] = Future()
        n = int(pixels.shape[0])
        with self._cond:
            if self._closed:
                raise BatcherClosedError("the similarity service is shutting down")
            if self._queued_views + n > self.max_queue_views:
                raise QueueFullError(
                    f"queue full: {self._queued_views} views waiting, this request adds {n}, "
                    f"limit {self.max_queue_views}; retry with backoff"
                )
            self._jobs.append(_Job(pixels, future))
            self._queued_views += n
            self._cond.notify()
        return future

    def close(self, timeout: float | None = None) -> None:
        """Stop taking work; jobs already queued are still encoded."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._worker.join(timeout)

    def _take_batch(self) -> list[_Job] | None:
        with self._cond:
            while not self._jobs:
                if self._closed:
                    return None
                self._cond.wait()
            deadline = time.monotonic() + self.max_wait_s
            while self._queued_views < self.max_batch and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            jobs, views = [], 0
            # Always take at least one job, however large; then fill up to max_batch.
            while self._jobs and (
                not jobs or views + self._jobs[0].pixels.shape[0] <= self.max_batch
            ):
                job = self._jobs.popleft()
                jobs.append(job)
                views += int(job.pixels.shape[0])
            self._queued_views -= views
            return jobs

    def _run(self) -> None:
        while (jobs := self._take_batch()) is not None:
            try:
                pixels = torch.cat([job.pixels for job in jobs])
                embeddings = torch.cat(
                    [self._encode(chunk) for chunk in pixels.split(self.max_batch)]
                )
                if self._on_batch is not None:
                    self._on_batch(int(pixels.shape[0]))
            except Exception as error:  # every waiter must hear about it
                for job in jobs:
                    job.future.set_exception(error)
                continue
            for job, rows in zip(
                jobs, embeddings.split([int(j.pixels.shape[0]) for j in jobs]), strict=True
            ):
                job.future.set_result(rows)
