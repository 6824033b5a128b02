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

import itertools
import logging
import queue
import threading
import time
from collections.abc import Iterable, Iterator, Sequence

import grpc

from cdul._proto.cdul.similarity.v1 import similarity_pb2 as pb
from cdul._proto.cdul.similarity.v1 import similarity_pb2_grpc as pb_grpc
from cdul.core.errors import CdulError
from cdul.core.label_set import DEFAULT_TEMPLATE
from cdul.core.retry import RetryPolicy

log = logging.getLogger(__name__)
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)


class SimilarityServiceError(CdulError):
    """A call failed for good; carries the gRPC status code."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code


def label_set_ref(classes: Sequence[str], template: str = DEFAULT_TEMPLATE) -> pb.LabelSetRef:
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
        make = (
            (lambda e: grpc.secure_channel(e, credentials, options))
            if credentials
            else (lambda e: grpc.insecure_channel(e, options))
        )
        self.endpoints = list(endpoints)
        self._channels = [make(e) for e in self.endpoints]
        self._stubs = [pb_grpc.SimilarityStub(c) for c in self._channels]
        self._next = itertools.count()
        self.streams_per_endpoint = streams_per_endpoint
        self.deadline_s = deadline_s
        self.retry = retry or RetryPolicy(attempts=6, initial_backoff_s=0.2, max_backoff_s=5.0)

    def close(self) -> None:
        for channel in self._channels:
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
                return getattr(self._stubs[index], method)(request, timeout=self.deadline_s)
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

    def model_info(self) -> pb.ModelInfo:
        return self._unary("GetModelInfo", pb.ModelInfoRequest())

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
        spec: str = "grid:3x3",
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
        spec: str = "grid:3x3",
        max_in_flight: int = 32,
    ) -> Iterator[pb.SnippetResponse]:
        """Global + snippet scores for every image, spread over the endpoints' streams
        (``max_in_flight`` requests outstanding on each).

        Answers come as they arrive (use ``response.id`` to match them); a bad image is
        an answer with ``error`` set, not an exception. A stream that fails with
        UNAVAILABLE is reopened and its unanswered images are sent again.
        """
        answers: queue.Queue = queue.Queue()
        streams = [
            (stub, endpoint)
            for stub, endpoint in zip(self._stubs, self.endpoints, strict=True)
            for _ in range(self.streams_per_endpoint)
        ]
        work: queue.Queue = queue.Queue(maxsize=max_in_flight * len(streams))
        done = object()

        def feed() -> None:
            for image_id, data in images:
                work.put(pb.SnippetRequest(labels=labels, image=pb.Image(id=image_id, data=data),
                                           snippet_spec=spec))  # fmt: skip
            for _ in streams:
                work.put(done)

        def drive(stub: pb_grpc.SimilarityStub, endpoint: str) -> None:
            try:
                self._drive_stream(stub, endpoint, work, answers, done, max_in_flight)
            except Exception as error:  # surfaced to the consumer below
                answers.put(error)
            finally:
                answers.put(done)

        threads = [threading.Thread(target=feed, daemon=True)] + [
            threading.Thread(target=drive, args=stream, daemon=True) for stream in streams
        ]
        for thread in threads:
            thread.start()
        finished = 0
        while finished < len(streams):
            item = answers.get()
            if item is done:
                finished += 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield item

    def _drive_stream(self, stub, endpoint, work, answers, done, max_in_flight) -> None:
        # The retry budget counts failures in a row: a stream that got an answer since
        # its last failure starts afresh, so a long run survives any number of replica
        # restarts, while a server that never answers still fails after the policy's
        # attempts.
        backoffs = self.retry.backoffs()
        resend: list[pb.SnippetRequest] = []
        exhausted = False
        while True:
            slots = threading.Semaphore(max_in_flight)
            in_flight: dict[str, list[pb.SnippetRequest]] = {}
            lock = threading.Lock()
            state = {"exhausted": exhausted}
            answered = False

            try:
                for response in stub.ScoreStream(
                    _requests(resend, slots, state, lock, in_flight, work, done), timeout=None
                ):
                    if not answered:
                        answered, backoffs = True, self.retry.backoffs()
                    with lock:
                        queued = in_flight.get(response.id)
                        if queued:
                            queued.pop(0)
                            if not queued:
                                del in_flight[response.id]
                    answers.put(response)
                    slots.release()
                with lock:
                    if not in_flight and state["exhausted"]:
                        return
                    resend = [r for rs in in_flight.values() for r in rs]
                    exhausted = state["exhausted"]
                if not resend and exhausted:
                    return
            except grpc.RpcError as error:
                delay = next(backoffs, None) if error.code() in RETRYABLE else None
                if delay is None:
                    raise SimilarityServiceError(
                        error.code(), f"ScoreStream to {endpoint}: {error.details()}"
                    ) from None
                with lock:
                    resend = [r for rs in in_flight.values() for r in rs]
                    exhausted = state["exhausted"]
                log.warning("ScoreStream to %s: %s; resending %d images in %.2fs", endpoint,
                            error.code().name, len(resend), delay)  # fmt: skip
                time.sleep(delay)


def _requests(resend, slots, state, lock, in_flight, work, done) -> Iterator[pb.SnippetRequest]:
    """One stream's requests: resent ones first, then new work, one free slot each."""
    pending = list(resend)
    while True:
        slots.acquire()
        if pending:
            request = pending.pop(0)
        elif state["exhausted"]:
            return
        else:
            request = work.get()
            if request is done:
                state["exhausted"] = True
                return
        with lock:
            in_flight.setdefault(request.image.id, []).append(request)
        yield request
