"""Batches of the world's single objects for pre-training, drawn ahead in a thread.

Step ``k`` holds singles ``k*B .. k*B+B-1`` of ``(seed, stream)``, exactly as when they
were drawn in the training loop, so the weights do not depend on the prefetching.
Drawing a batch (numpy noise, PIL masks, preprocessing) costs about a fifth of a
tiny-CLIP step on two cores; a thread overlaps it with the step, whose torch kernels
release the GIL. (A DataLoader worker process was tried first: forked after torch's
OpenMP pool had started, its preprocessing ran 15x slower.)
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from cdul.world.generator import SINGLE_SIZE, Single, make_single

Encode = Callable[[Sequence[Single]], Any]
_DONE = object()


def draw_batches(
    seed: int, stream: str, batch_size: int, steps: int, encode: Encode, size: int = SINGLE_SIZE
) -> Iterator[Any]:
    """The batches in order, drawn in this thread (singles ``size`` px square)."""
    for step in range(steps):
        indices = range(step * batch_size, (step + 1) * batch_size)
        yield encode([make_single(seed, i, stream=stream, size=size) for i in indices])


def single_batches(
    seed: int,
    stream: str,
    batch_size: int,
    steps: int,
    encode: Encode,
    ahead: int = 4,
    size: int = SINGLE_SIZE,
) -> Iterator[Any]:
    """The batches in order, up to ``ahead`` drawn in advance (``ahead=0``: no thread)."""
    batches = draw_batches(seed, stream, batch_size, steps, encode, size)
    if ahead <= 0:
        yield from batches
        return
    ready: queue.Queue = queue.Queue(maxsize=ahead)
    stop = threading.Event()

    def put(item: Any) -> bool:
        """Hand ``item`` over unless the consumer has stopped; whether it was taken."""
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def fill() -> None:
        try:
            for batch in batches:
                if not put(batch):
                    return
            put(_DONE)
        except BaseException as error:  # raised again in the consumer
            put(error)

    thread = threading.Thread(target=fill, name="world-singles", daemon=True)
    thread.start()
    try:
        while (item := ready.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()
