"""The client library of the similarity service, as the labeler uses it.

- Deadlines on every call; retries with exponential backoff on UNAVAILABLE (and
  RESOURCE_EXHAUSTED, which the server answers when its queue is full).
- Several endpoints, round-robin: unary calls rotate; :meth:`score_stream` spreads the
  images over ``streams_per_endpoint`` streams per endpoint.
- An endpoint may name several servers: gRPC's own target syntax
  (``dns:///clip-service-headless:51000`` for every address a Kubernetes headless
  Service resolves to, ``ipv4:10.0.0.1:51000,10.0.0.2:51000``). Channels balance
  calls round-robin over the addresses, so with several streams per endpoint the
  streams land on different replicas (one stream is one call: it stays on one).
- Streaming with a bounded number of requests in flight per stream: the request
  iterator waits until an answer frees a slot, so memory stays bounded however many
  images are sent.
"""

from __future__ import annotations

import collections
import itertools
import logging
import queue
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import grpc
import torch

from cdul._proto.cdul.similarity.v1 import similarity_pb2 as pb
from cdul._proto.cdul.similarity.v1 import similarity_pb2_grpc as pb_grpc
from cdul.core.errors import CdulError
from cdul.core.label_set import DEFAULT_TEMPLATE
from cdul.core.method.snippets import DEFAULT_SNIPPET_SPEC
from cdul.core.retry import RetryPolicy

log = logging.getLogger(__name__)
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)


class SimilarityServiceError(CdulError):
    """A call failed for good; carries the gRPC status code."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code


def label_set_ref(
    classes: Sequence[str], template: str = DEFAULT_TEMPLATE, templates: Sequence[str] = ()
) -> pb.LabelSetRef:
    """A label set by value: one ``template``, or a prompt ensemble of ``templates``."""
    if templates:
        return pb.LabelSetRef(value=pb.LabelSet(classes=list(classes), templates=list(templates)))
    return pb.LabelSetRef(value=pb.LabelSet(classes=list(classes), template=template))


class SimilarityClient:
    def __init__(
        self,
        endpoints: Sequence[str],
        deadline_s: float = 60.0,
        retry: RetryPolicy | None = None,
        max_message_mb: int = 32,
        credentials: grpc.ChannelCredentials | None = None,
        streams_per_endpoint: int = 1,
    ) -> None:
        if not endpoints:
            raise ValueError("give at least one CLIP service endpoint (host:port)")
        if streams_per_endpoint < 1:
            raise ValueError(f"streams_per_endpoint must be >= 1, got {streams_per_endpoint}")
        limit = max_message_mb * 1024 * 1024
        options = [
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            # Every address a target resolves to, in turn (gRPC's default picks the first).
            ("grpc.lb_policy_name", "round_robin"),
        ]
        # Each channel its own connections (gRPC shares them between channels of equal
        # settings otherwise): a server run as several processes on one port
        # (clip-serve --processes) is spread over by connection, so each stream needs one.
        options.append(("grpc.use_local_subchannel_pool", 1))
        make = (
            (lambda e: grpc.secure_channel(e, credentials, options))
            if credentials
            else (lambda e: grpc.insecure_channel(e, options))
        )
        self.endpoints = list(endpoints)
        # Per endpoint: one channel per stream; unary calls use the first.
        self._channels = [[make(e) for _ in range(streams_per_endpoint)] for e in self.endpoints]
        self._stubs = [[pb_grpc.SimilarityStub(c) for c in per_endpoint]
                       for per_endpoint in self._channels]  # fmt: skip
        self._next = itertools.count()
        self._streams_connected = False
        self.streams_per_endpoint = streams_per_endpoint
        self.deadline_s = deadline_s
        self.retry = retry or RetryPolicy(attempts=6, initial_backoff_s=0.2, max_backoff_s=5.0)

    def close(self) -> None:
        for per_endpoint in self._channels:
            for channel in per_endpoint:
                channel.close()

    def __enter__(self) -> SimilarityClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _unary(self, method: str, request):
        backoffs = self.retry.backoffs()
        while True:
            index = next(self._next) % len(self._stubs)
            try:
                return getattr(self._stubs[index][0], method)(request, timeout=self.deadline_s)
            except grpc.RpcError as error:
                code = error.code()
                delay = next(backoffs, None) if code in RETRYABLE else None
                if delay is None:
                    raise SimilarityServiceError(
                        code, f"{method} to {self.endpoints[index]}: {error.details()}"
                    ) from None
                log.warning("%s to %s: %s; retrying in %.2fs", method, self.endpoints[index],
                            code.name, delay)  # fmt: skip
                time.sleep(delay)

    def _connect_stream_channels(self, settle_s: float = 0.1) -> None:
        """Connect every stream's channel before its first call: round-robin picks among
        the addresses already connected, so a fresh channel would send its stream to
        whichever address of a multi-address target answered first. A channel that does
        not connect now is left to the stream's own retries. Once per client: a job that
        streams several times (one call per tar shard) waits for the connections once, and
        leaves no connectivity poller behind on a channel it closes."""
        if self._streams_connected:
            return
        self._streams_connected = True
        channels = [c for per_endpoint in self._channels for c in per_endpoint]
        futures = [grpc.channel_ready_future(c) for c in channels]
        for future in futures:
            try:
                future.result(timeout=min(self.deadline_s, 10.0))
            except grpc.FutureTimeoutError:
                future.cancel()
        if len(channels) > 1:
            time.sleep(settle_s)  # the other addresses' connections, a round trip behind

    def model_info(self) -> pb.ModelInfo:
        return self._unary("GetModelInfo", pb.ModelInfoRequest())

    def text_embeddings(self, labels: pb.LabelSetRef) -> torch.Tensor:
        """``(C, D)`` float32 class embeddings of a label set, exactly those the service
        scores with: :func:`cdul.core.method.similarity.view_scores` on stored view
        embeddings then gives the service's answer again."""
        response = self._unary("TextEmbeddings", pb.TextEmbeddingsRequest(labels=labels))
        dim = int(response.embed_dim)
        values = torch.tensor(list(response.embedding), dtype=torch.float32)
        if dim < 1 or values.numel() % dim:
            raise SimilarityServiceError(
                grpc.StatusCode.INTERNAL,
                f"TextEmbeddings answered {values.numel()} values for {dim}-d embeddings",
            )
        return values.reshape(-1, dim)

    def global_similarity(
        self, images: Sequence[tuple[str, bytes]], labels: pb.LabelSetRef
    ) -> pb.GlobalResponse:
        request = pb.GlobalRequest(
            labels=labels, images=[pb.Image(id=i, data=d) for i, d in images]
        )
        return self._unary("GlobalSimilarity", request)

    def snippet_similarity(
        self,
        image_id: str,
        data: bytes,
        labels: pb.LabelSetRef,
        spec: str = DEFAULT_SNIPPET_SPEC,
        zeta: float | None = None,
        include_snippets: bool = False,
    ) -> pb.SnippetResponse:
        request = pb.SnippetRequest(
            labels=labels,
            image=pb.Image(id=image_id, data=data),
            snippet_spec=spec,
            include_snippets=include_snippets,
        )
        if zeta is not None:
            request.zeta = zeta
        return self._unary("SnippetSimilarity", request)

    def score_stream(
        self,
        images: Iterable[tuple[str, bytes]],
        labels: pb.LabelSetRef,
        spec: str = DEFAULT_SNIPPET_SPEC,
        max_in_flight: int = 32,
        include_cosines: bool = False,
        include_embeddings: bool = False,
    ) -> Iterator[pb.SnippetResponse]:
        """Global + snippet scores for every image, spread over the endpoints' streams
        (``max_in_flight`` requests outstanding on each).

        Answers come as they arrive (use ``response.id`` to match them); a bad image is
        an answer with ``error`` set, not an exception. A stream that fails with
        UNAVAILABLE is reopened and its unanswered images are sent again. With
        ``include_cosines`` each answer also carries every snippet's cosines, with
        ``include_embeddings`` its views' image embeddings (scored as sent).
        """
        stream_count = len(self._stubs) * self.streams_per_endpoint
        work = _Work(maxsize=max_in_flight * stream_count)
        answers: queue.Queue[pb.SnippetResponse | Exception | _End] = queue.Queue()

        def feed() -> None:
            for image_id, data in images:
                work.put(pb.SnippetRequest(labels=labels, image=pb.Image(id=image_id, data=data),
                                           snippet_spec=spec,
                                           include_cosines=include_cosines,
                                           include_embeddings=include_embeddings))  # fmt: skip
            for _ in range(stream_count):
                work.put(_END)

        self._connect_stream_channels()
        drivers = [
            _StreamDriver(stub, endpoint, work, answers, max_in_flight, self.retry)
            for stubs, endpoint in zip(self._stubs, self.endpoints, strict=True)
            for stub in stubs
        ]
        threads = [threading.Thread(target=feed, daemon=True)] + [
            threading.Thread(target=driver.run, daemon=True) for driver in drivers
        ]
        for thread in threads:
            thread.start()
        finished = 0
        while finished < stream_count:
            item = answers.get()
            if isinstance(item, _End):
                finished += 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield item


class _End:
    """The end of the work (in the shared work queue), or of one stream's answers."""


_END = _End()


class _Work:
    """The requests of one :meth:`SimilarityClient.score_stream` call, shared by its
    streams: a bounded FIFO the feeder fills. An attempt takes the next item and records
    it as sent in one step (:meth:`take`, under this queue's lock), and a closed attempt
    takes nothing, so no item is ever held by a stream that failed: each is answered,
    or resent by the attempt after it, or still here for another stream.

    (Taking an item first and giving it back when the attempt turned out to be closed
    lost images: given back behind the end of the work, nobody took them again.)"""

    def __init__(self, maxsize: int) -> None:
        self._items: collections.deque[pb.SnippetRequest | _End] = collections.deque()
        self._maxsize = maxsize
        self._changed = threading.Condition()

    def put(self, item: pb.SnippetRequest | _End) -> None:
        """Append ``item``, waiting while the queue is full (the feeder's back-pressure)."""
        with self._changed:
            self._changed.wait_for(lambda: len(self._items) < self._maxsize)
            self._items.append(item)
            self._changed.notify_all()

    def take(self, attempt: _Attempt) -> pb.SnippetRequest | _End | None:
        """The next item, claimed by ``attempt`` (see :meth:`_Attempt.claim`); None once
        the attempt is closed (it took nothing then)."""
        with self._changed:
            while True:
                if attempt.closed:
                    return None
                if self._items:
                    item = self._items[0]
                    if not attempt.claim(item):  # closed since the check above
                        return None
                    self._items.popleft()
                    self._changed.notify_all()
                    return item
                self._changed.wait()

    def wake(self) -> None:
        """Wake every waiting taker, so a closed attempt's sender sees it is closed."""
        with self._changed:
            self._changed.notify_all()


@dataclass
class _StreamDriver:
    """One of :meth:`SimilarityClient.score_stream`'s streams: takes requests from the
    shared ``work`` until it ends, ``max_in_flight`` of them unanswered at most, and puts
    the answers on ``answers``, then ``_END`` (after the error, if it failed for good).
    A stream that fails with a retryable code is reopened and its unanswered requests
    are sent again, first."""

    stub: pb_grpc.SimilarityStub
    endpoint: str
    work: _Work
    answers: queue.Queue[pb.SnippetResponse | Exception | _End]
    max_in_flight: int
    retry: RetryPolicy

    def run(self) -> None:
        try:
            self._drive()
        except Exception as error:  # surfaced to score_stream's caller
            self.answers.put(error)
        finally:
            self.answers.put(_END)

    def _drive(self) -> None:
        # The retry budget counts failures in a row: a stream that got an answer since
        # its last failure starts afresh, so a long run survives any number of replica
        # restarts, while a server that never answers still fails after the policy's
        # attempts.
        backoffs = self.retry.backoffs()
        resend: list[pb.SnippetRequest] = []
        exhausted = False
        while True:
            attempt = _Attempt(resend, exhausted, self.max_in_flight, self.work)
            answered = False
            try:
                for response in self.stub.ScoreStream(attempt.requests(), timeout=None):
                    if not answered:
                        answered, backoffs = True, self.retry.backoffs()
                    attempt.record_answer(response)
                    self.answers.put(response)
                    attempt.slots.release()
                resend, exhausted = attempt.close()
                if not resend and exhausted:
                    return
            except grpc.RpcError as error:
                resend, exhausted = attempt.close()
                delay = next(backoffs, None) if error.code() in RETRYABLE else None
                if delay is None:
                    raise SimilarityServiceError(
                        error.code(), f"ScoreStream to {self.endpoint}: {error.details()}"
                    ) from None
                log.warning("ScoreStream to %s: %s; resending %d images in %.2fs",
                            self.endpoint, error.code().name, len(resend), delay)  # fmt: skip
                time.sleep(delay)


class _Attempt:
    """One opening of a stream. Its request iterator runs on gRPC's sending thread and
    its answers arrive on the driver's: ``lock`` guards the attempt's state between them.

    gRPC's sending thread can outlive the stream: still waiting for work when the stream
    fails, it would take the next item later. :meth:`close` marks the attempt over and
    wakes that thread, which then takes nothing (:meth:`_Work.take`), and the requests
    still to resend go to the next attempt with the unanswered ones."""

    def __init__(
        self, resend: list[pb.SnippetRequest], exhausted: bool, slots: int, work: _Work
    ) -> None:
        self.pending = collections.deque(resend)  # to send first
        self.exhausted = exhausted  # the shared work has ended for this stream
        self.slots = threading.Semaphore(slots)  # one per request in flight
        self._slot_count = slots
        self.in_flight: dict[str, list[pb.SnippetRequest]] = {}
        self.closed = False
        self.lock = threading.Lock()
        self.work = work

    def requests(self) -> Iterator[pb.SnippetRequest]:
        """Resent requests first, then new work, one free slot each."""
        while True:
            self.slots.acquire()
            with self.lock:
                if self.closed or (self.exhausted and not self.pending):
                    return
                request = self.pending.popleft() if self.pending else None
                if request is not None:
                    self._send(request)
            if request is None:
                taken = self.work.take(self)
                if taken is None or isinstance(taken, _End):
                    return
                request = taken
            yield request

    def claim(self, item: pb.SnippetRequest | _End) -> bool:
        """Record ``item``, taken from the shared work, as sent (the end of the work: this
        stream is exhausted); False, recording nothing, when the attempt is closed."""
        with self.lock:
            if self.closed:
                return False
            if isinstance(item, _End):
                self.exhausted = True
            else:
                self._send(item)
            return True

    def _send(self, request: pb.SnippetRequest) -> None:
        self.in_flight.setdefault(request.image.id, []).append(request)

    def record_answer(self, response: pb.SnippetResponse) -> None:
        with self.lock:
            queued = self.in_flight.get(response.id)
            if queued:
                queued.pop(0)
                if not queued:
                    del self.in_flight[response.id]

    def close(self) -> tuple[list[pb.SnippetRequest], bool]:
        """End the attempt: the requests sent and not answered, then those not resent
        yet, and whether the work has ended. Wakes a sending thread that waits for a
        slot or for work, so it sees the attempt is over."""
        with self.lock:
            self.closed = True
            unanswered = [r for rs in self.in_flight.values() for r in rs]
            unanswered += list(self.pending)
            self.pending.clear()
            exhausted = self.exhausted
        self.slots.release(self._slot_count)
        self.work.wake()
        return unanswered, exhausted
