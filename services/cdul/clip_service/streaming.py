"""A bidirectional stream answered in order while later requests are already at work,
alive exactly as long as its gRPC call.

A reader thread takes requests as they come, so a client that waits for answers before
sending more can never deadlock the stream: ``start`` turns each into a future (work on
a pool), at most ``capacity`` of them queued, and the call's own thread turns each
finished piece of work into its answer with ``answer``.

When the call ends, whether done, cancelled, past its deadline or with the client gone,
gRPC runs :meth:`PipelinedStream.stop` (registered with ``context.add_callback``, as in
gRPC's ``examples/python/cancellation/server.py``): both threads wake and return,
futures not yet started are cancelled, and work already done (or done later) goes to
``abandon``, which drops what it queued elsewhere. Without this a reader blocked on a
full queue outlived a cancelled call for good, and its queued work was computed for
nobody.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError, Future
from typing import Generic, TypeVar

import grpc

log = logging.getLogger(__name__)
RequestT = TypeVar("RequestT")
WorkT = TypeVar("WorkT")
ResponseT = TypeVar("ResponseT")

#: How often a waiting thread checks that its call is still on. A safety net only: the
#: end-of-call callback wakes it at once.
POLL_S = 1.0
_serial = itertools.count(1)


class PipelinedStream(Generic[RequestT, WorkT, ResponseT]):
    """One call's stream (see the module's docstring); :meth:`responses` is what the
    servicer method returns."""

    def __init__(
        self,
        requests: Iterator[RequestT],
        context: grpc.ServicerContext,
        start: Callable[[RequestT], Future[WorkT]],
        answer: Callable[[WorkT], ResponseT],
        abandon: Callable[[WorkT], None],
        capacity: int,
        name: str,
    ) -> None:
        """``answer`` may raise :class:`CancelledError` once ``abandon`` dropped its work;
        the reader thread is called ``<name>-<serial>``."""
        self._requests = requests
        self._context = context
        self._start, self._answer, self._abandon = start, answer, abandon
        self._capacity = capacity
        self._queued: collections.deque[Future[WorkT]] = collections.deque()
        self._answering: Future[WorkT] | None = None
        self._read_all = False
        self._stopped = False
        self._cond = threading.Condition()  # an RLock: stop() may run inside _wait()
        self._reader = threading.Thread(
            target=self._read, name=f"{name}-{next(_serial)}", daemon=True
        )
        if not context.add_callback(self.stop):  # the call has already ended
            self.stop()

    def responses(self) -> Iterator[ResponseT]:
        """The answers, in request order, until the client is done or the call ends."""
        if not self._stopped:
            self._reader.start()
        try:
            while (future := self._next()) is not None:
                try:
                    response = self._answer(future.result())
                except CancelledError:  # stop() dropped it: nobody is listening any more
                    return
                yield response
        finally:  # gRPC also closes the generator when it stops asking for answers
            self.stop()

    def stop(self) -> None:
        """End the stream: wake both threads, drop the work nobody will read."""
        with self._cond:
            if self._stopped:
                return
            self._stopped = True
            dropped = [*self._queued, self._answering]
            self._queued.clear()
            self._cond.notify_all()
        for future in dropped:
            if future is not None:
                self._drop(future)

    def _drop(self, future: Future[WorkT]) -> None:
        # Not started: it never runs. Running or done: abandon its work once it is done.
        if not future.cancel():
            future.add_done_callback(self._abandon_done)

    def _abandon_done(self, future: Future[WorkT]) -> None:
        if future.exception() is None:
            self._abandon(future.result())

    def _wait(self) -> None:
        """Wait for a change (with ``_cond`` held); stop if the call ended unnoticed."""
        if not self._cond.wait(POLL_S) and not self._context.is_active():
            self.stop()

    def _read(self) -> None:
        try:
            for request in self._requests:
                if not self._enqueue(self._start(request)):
                    return
        except Exception as error:  # the call ended under the reader (a grpc.RpcError)
            log.debug("stream reader ended: %s", error)
        finally:
            with self._cond:
                self._read_all = True
                self._cond.notify_all()

    def _enqueue(self, future: Future[WorkT]) -> bool:
        """Queue one request's future once there is room; False once the stream stopped."""
        with self._cond:
            while len(self._queued) >= self._capacity and not self._stopped:
                self._wait()
            if not self._stopped:
                self._queued.append(future)
                self._cond.notify_all()
                return True
        self._drop(future)  # stop() came after start(): it could not see this one
        return False

    def _next(self) -> Future[WorkT] | None:
        """The oldest unanswered request; None once all are answered or the call ended."""
        with self._cond:
            while not self._queued and not self._read_all and not self._stopped:
                self._wait()
            if self._stopped or not self._queued:
                return None
            self._answering = self._queued.popleft()
            self._cond.notify_all()  # a free slot for the reader
            return self._answering
