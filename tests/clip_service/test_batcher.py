"""The dynamic batcher: packing, limits, lazy preprocessing and the one torch thread."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from cdul.clip_service.batcher import (
    BatcherClosedError,
    DynamicBatcher,
    QueueFullError,
    single_threaded_torch,
    use_torch_threads,
)


class RecordingEncoder:
    """A stand-in encoder (the batcher's logic is under test, not CLIP): each view's
    embedding is its pixel sum; records every forward's size and thread."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.sizes: list[int] = []
        self.threads: set[str] = set()
        self.delay_s = delay_s

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        self.sizes.append(int(pixels.shape[0]))
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay_s)
        return pixels.flatten(1).sum(1, keepdim=True)


def views(n: int, value: float) -> torch.Tensor:
    return torch.full((n, 3, 2, 2), value)


def test_concurrent_jobs_share_one_forward_and_get_their_own_rows():
    encoder = RecordingEncoder()
    batcher = DynamicBatcher(encoder, max_batch=64, max_wait_ms=200)
    futures = [batcher.submit(views(10, float(i))) for i in range(6)]
    results = [f.result(timeout=10) for f in futures]
    batcher.close()
    assert encoder.sizes == [60]  # six jobs of ten views, one forward
    for i, rows in enumerate(results):
        assert torch.equal(rows, torch.full((10, 1), 12.0 * i))


def test_a_batch_never_exceeds_max_batch_but_a_big_job_is_split():
    encoder = RecordingEncoder()
    batcher = DynamicBatcher(encoder, max_batch=8, max_wait_ms=50)
    small = [batcher.submit(views(3, 1.0)) for _ in range(3)]
    big = batcher.submit(views(20, 2.0))
    for f in [*small, big]:
        f.result(timeout=10)
    batcher.close()
    assert max(encoder.sizes) <= 8 and sum(encoder.sizes) == 29
    assert torch.equal(big.result(), torch.full((20, 1), 24.0))


def test_a_full_queue_refuses_at_once_and_a_closed_batcher_refuses_new_work():
    batcher = DynamicBatcher(RecordingEncoder(delay_s=0.3), max_batch=4, max_queue_views=8)
    first = batcher.submit(views(4, 1.0))  # taken by the worker (busy 0.3 s)
    time.sleep(0.05)
    queued = batcher.submit(views(8, 1.0))
    with pytest.raises(QueueFullError, match="8 views waiting, this request adds 1, limit 8"):
        batcher.submit(views(1, 1.0))
    batcher.close(timeout=10)
    assert first.done() and queued.done()  # queued work is still encoded on close
    with pytest.raises(BatcherClosedError):
        batcher.submit(views(1, 1.0))
    with pytest.raises(BatcherClosedError):
        batcher.call(int)


def test_lazy_views_run_on_the_worker_and_a_failing_one_fails_alone():
    encoder = RecordingEncoder()
    batcher = DynamicBatcher(encoder, max_batch=64, max_wait_ms=200)
    prepared_on: list[str] = []

    def prepare() -> torch.Tensor:
        prepared_on.append(threading.current_thread().name)
        return views(5, 1.0)

    def broken() -> torch.Tensor:
        raise OSError("image file is truncated")

    good = batcher.submit(prepare, views=5)
    bad = batcher.submit(broken, views=5)
    liar = batcher.submit(lambda: views(2, 1.0), views=5)
    eager = batcher.submit(views(5, 3.0))
    assert torch.equal(good.result(timeout=10), torch.full((5, 1), 12.0))
    with pytest.raises(OSError, match="truncated"):
        bad.result(timeout=10)
    with pytest.raises(ValueError, match="2 views prepared, 5 announced"):
        liar.result(timeout=10)
    assert torch.equal(eager.result(timeout=10), torch.full((5, 1), 36.0))
    batcher.close()
    assert prepared_on == ["clip-batcher"] and encoder.threads == {"clip-batcher"}
    with pytest.raises(ValueError, match="number of views"):
        batcher.submit(prepare)


def test_calls_run_on_the_worker_thread_before_the_next_batch():
    batcher = DynamicBatcher(RecordingEncoder(), max_batch=4)
    assert batcher.call(lambda: threading.current_thread().name).result(10) == "clip-batcher"
    assert batcher.call(pow, 2, 10).result(10) == 1024
    with pytest.raises(ZeroDivisionError):
        batcher.call(lambda: 1 / 0).result(10)
    assert batcher.submit(views(1, 1.0)).result(10).item() == 12.0  # still serving
    batcher.close()


def test_single_threaded_torch_applies_to_the_calling_thread_only():
    before = torch.get_num_threads()
    seen: list[int] = []

    def other() -> None:
        single_threaded_torch()
        seen.append(torch.get_num_threads())

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert seen == [1]
    assert torch.get_num_threads() == before


def _in_a_thread(fn):
    """``fn()`` run on a new thread (torch's per-thread settings start afresh there)."""
    result: list = []
    thread = threading.Thread(target=lambda: result.append(fn()))
    thread.start()
    thread.join()
    return result[0]


def test_the_worker_keeps_its_makers_threads_whatever_other_threads_set():
    # A thread started after another set 1 thread would run torch on 1 (torch keeps one
    # process-wide count for new threads), as a server's RPC threads do (see above).
    def made_with_three_threads() -> int:
        torch.set_num_threads(3)
        batcher = DynamicBatcher(RecordingEncoder(), max_batch=4)
        _in_a_thread(single_threaded_torch)  # an RPC thread, after the batcher was made
        try:
            return batcher.call(torch.get_num_threads).result(10)
        finally:
            batcher.close()

    assert _in_a_thread(single_threaded_torch) is None
    assert _in_a_thread(torch.get_num_threads) == 1  # what a new thread gets now
    assert _in_a_thread(made_with_three_threads) == 3
    explicit = DynamicBatcher(RecordingEncoder(), threads=2)
    assert explicit.call(torch.get_num_threads).result(10) == 2 and explicit.threads == 2
    explicit.close()
    with pytest.raises(ValueError, match="threads must be >= 1"):
        DynamicBatcher(RecordingEncoder(), threads=0)


def test_a_threads_setting_holds_when_another_thread_sets_one_before_its_first_op():
    set_here, other_done = threading.Event(), threading.Event()

    def worker() -> int:
        use_torch_threads(3)
        set_here.set()
        other_done.wait(10)
        return torch.get_num_threads()  # its first op after the other thread's setting

    def other() -> None:
        set_here.wait(10)
        single_threaded_torch()
        other_done.set()

    helper = threading.Thread(target=other)
    helper.start()
    assert _in_a_thread(worker) == 3
    helper.join()
