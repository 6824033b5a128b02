"""A dynamic batcher: packs the views of concurrent requests into one encoder forward.

Request threads submit the views of one image (the whole image and its snippets) and
wait on a future. The views come preprocessed, or as a function that preprocesses them:
the worker then calls it just before the forward. On a CPU-only server that is faster
(the encoder's intra-op threads and the preprocessing no longer fight over the same
cores, see ``benchmarks/clip_service_vs_in_process.py``); on a GPU, request threads preprocess
while the device encodes.

The worker is the service's one torch thread: :meth:`DynamicBatcher.call` runs other
torch work on it (loading the model, encoding a new label set's prompts). Why: with
PyTorch's OpenMP backend every thread that runs a parallel op gets its own OpenMP team,
and once libgomp manages more threads than there are cores it stops spin-waiting
between parallel regions; every op of the encoder then pays a futex wake-up. Measured
on 2 cores: the tiny CLIP encoder at 2.3 ms/image on the thread that loaded it, 3.5
ms/image on a second thread. Other threads of the service therefore run torch with one
intra-op thread (:func:`single_threaded_torch`, a thread-pool initializer): they then
never start an OpenMP team. One worker thread takes the oldest job, then keeps
taking jobs until ``max_batch`` views are gathered or ``max_wait_ms`` has passed since
the first, runs the encoder once per ``max_batch`` views, and hands each job its rows.
A job may name its own encoder (a dense spec's returns several embeddings per view):
a batch holds jobs of one encoder only, taken in order.
The worker runs torch with the intra-op threads of the thread that made the batcher
(or ``threads``), whatever other threads set meanwhile.
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
from typing import TypeVar

import torch

from cdul.core.errors import CdulError


def use_torch_threads(threads: int) -> None:
    """Run the calling thread's torch ops on ``threads`` intra-op threads, for good.

    ``torch.set_num_threads`` sets the calling thread's count (OpenMP's nthreads ICV,
    MKL's local setting) and a process-wide one, and torch gives each thread its count
    lazily, at its first op, from the process-wide one: a thread that set its count
    before any op got, at that op, whatever another thread had set meanwhile. Asking
    first makes that first op now."""
    torch.get_num_threads()
    torch.set_num_threads(threads)


def single_threaded_torch() -> None:
    """Make the calling thread run torch ops inline (no OpenMP team of its own)."""
    use_torch_threads(1)


class QueueFullError(CdulError):
    """The batcher's queue holds too many views; the caller should back off
    (RESOURCE_EXHAUSTED to a gRPC client)."""


class BatcherClosedError(CdulError):
    """The batcher is shutting down and takes no new work (UNAVAILABLE to a gRPC client)."""


T = TypeVar("T")
Pixels = torch.Tensor | Callable[[], torch.Tensor]


Encode = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class _Job:
    pixels: Pixels
    views: int
    future: Future[torch.Tensor]
    encode: Encode | None = None

    def materialize(self) -> torch.Tensor:
        pixels = self.pixels() if callable(self.pixels) else self.pixels
        if pixels.shape[0] != self.views:
            raise ValueError(f"{pixels.shape[0]} views prepared, {self.views} announced")
        return pixels


class DynamicBatcher:
    def __init__(
        self,
        encode: Encode,
        max_batch: int = 64,
        max_wait_ms: float = 5.0,
        max_queue_views: int = 8192,
        on_batch: Callable[[int], None] | None = None,
        threads: int | None = None,
    ) -> None:
        if max_batch < 1 or max_queue_views < 1 or max_wait_ms < 0:
            raise ValueError("max_batch and max_queue_views must be >= 1, max_wait_ms >= 0")
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        # The worker's intra-op threads, fixed here: a new thread takes whatever count
        # some thread of the process set last (see use_torch_threads), and the service's
        # RPC threads each set 1, so a worker whose first op came after the first RPC
        # ran its encoder on one core, and two servers of one process encoded with
        # other blocking, rounding apart.
        self.threads = torch.get_num_threads() if threads is None else threads
        self._encode = encode
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_queue_views = max_queue_views
        self._on_batch = on_batch
        self._jobs: collections.deque[_Job] = collections.deque()
        self._calls: collections.deque[tuple[Callable[[], object], Future]] = collections.deque()
        self._queued_views = 0
        self._cond = threading.Condition()
        self._closed = False
        self._worker = threading.Thread(target=self._run, name="clip-batcher", daemon=True)
        self._worker.start()

    @property
    def queued_views(self) -> int:
        return self._queued_views

    def submit(
        self, pixels: Pixels, views: int | None = None, encode: Encode | None = None
    ) -> Future[torch.Tensor]:
        """Queue ``(n, 3, H, W)`` pixels, or a function returning them (then ``views`` = n);
        the future resolves to the ``n`` rows of the encoder's output (``(n, D)`` with
        the batcher's own), or to the function's exception. ``encode``: another encoder
        for this job (jobs share a batch when their encoders compare equal, as bound
        methods of one object do). Cancelling the
        future before the worker takes it drops the job."""
        future: Future[torch.Tensor] = Future()
        if callable(pixels):
            if views is None or views < 1:
                raise ValueError("a pixel function needs the number of views it will return")
            n = views
        else:
            n = int(pixels.shape[0])
        with self._cond:
            if self._closed:
                raise BatcherClosedError("the similarity service is shutting down")
            if self._queued_views + n > self.max_queue_views:
                raise QueueFullError(
                    f"queue full: {self._queued_views} views waiting, this request adds {n}, "
                    f"limit {self.max_queue_views}; retry with backoff"
                )
            self._jobs.append(_Job(pixels, n, future, encode))
            self._queued_views += n
            self._cond.notify()
        return future

    def call(self, fn: Callable[..., T], *args: object) -> Future[T]:
        """Run ``fn(*args)`` on the worker thread, before the next batch."""
        future: Future[T] = Future()
        with self._cond:
            if self._closed:
                raise BatcherClosedError("the similarity service is shutting down")
            self._calls.append((lambda: fn(*args), future))
            self._cond.notify()
        return future

    def close(self, timeout: float | None = None) -> None:
        """Stop taking work; jobs already queued are still encoded."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._worker.join(timeout)

    def _take_work(self) -> tuple[list[tuple[Callable[[], object], Future]], list[_Job]] | None:
        """Calls waiting (run first, at once), or a batch of jobs; None once closed and idle."""
        with self._cond:
            while not self._jobs and not self._calls:
                if self._closed:
                    return None
                self._cond.wait()
            if self._calls:
                calls = list(self._calls)
                self._calls.clear()
                return calls, []
            deadline = time.monotonic() + self.max_wait_s
            while self._queued_views < self.max_batch and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            jobs, views = [], 0
            # Always take at least one job, however large; then fill up to max_batch with
            # jobs of the same encoder.
            while self._jobs and (
                not jobs
                or (views + self._jobs[0].views <= self.max_batch
                    and self._jobs[0].encode == jobs[0].encode)
            ):  # fmt: skip
                job = self._jobs.popleft()
                jobs.append(job)
                views += job.views
            self._queued_views -= views
            return [], jobs

    def _run(self) -> None:
        use_torch_threads(self.threads)
        while (work := self._take_work()) is not None:
            calls, jobs = work
            for fn, future in calls:
                try:
                    future.set_result(fn())
                except Exception as error:
                    future.set_exception(error)
            if jobs:
                self._encode_batch(jobs)

    def _encode_batch(self, jobs: list[_Job]) -> None:
        ready: list[tuple[_Job, torch.Tensor]] = []
        for job in jobs:
            # A caller that gave up (a cancelled stream) cancelled its future: its views
            # are neither preprocessed nor encoded.
            if not job.future.set_running_or_notify_cancel():
                continue
            try:
                ready.append((job, job.materialize()))
            except Exception as error:  # one bad image fails its own request only
                job.future.set_exception(error)
        if not ready:
            return
        try:
            pixels = torch.cat([p for _, p in ready])
            encode = ready[0][0].encode or self._encode
            embeddings = torch.cat([encode(chunk) for chunk in pixels.split(self.max_batch)])
            if self._on_batch is not None:
                self._on_batch(int(pixels.shape[0]))
        except Exception as error:  # every waiter must hear about it
            for job, _ in ready:
                job.future.set_exception(error)
            return
        sizes = [job.views for job, _ in ready]
        for (job, _), rows in zip(ready, embeddings.split(sizes), strict=True):
            job.future.set_result(rows)
