"""A ScoreStream lives exactly as long as its call: cancelled streams, streams past their
deadline and streams whose client went away leave no thread behind and drop their
queued work, and the server answers correctly afterwards. A real server on loopback
with the tiny CLIP, as in test_service.py."""

from __future__ import annotations

import contextlib
import io
import threading
import time
from collections.abc import Callable, Iterator

import grpc
import pytest
import torch

from cdul._proto.cdul.similarity.v1 import similarity_pb2 as pb
from cdul._proto.cdul.similarity.v1 import similarity_pb2_grpc as pb_grpc
from cdul.clip_service.batcher import DynamicBatcher
from cdul.clip_service.client import SimilarityClient, label_set_ref
from cdul.clip_service.server import ServerConfig, SimilarityServer
from cdul.clip_service.servicer import Limits
from cdul.world.generator import make_scene
from cdul.world.shapes import SHAPES

pytestmark = pytest.mark.slow
READER = "clip-stream-reader"  # the servicer names every stream's reader thread so
IN_FLIGHT = 4  # a stream's queue: small, so that a stream nobody answers fills it fast
LABELS = label_set_ref(list(SHAPES))


@pytest.fixture(scope="module")
def server(world_clip) -> Iterator[SimilarityServer]:
    config = ServerConfig(model="cdul-tiny-rn", pretrained=str(world_clip), host="127.0.0.1",
                          port=0, metrics_port=None, max_wait_ms=2.0,
                          limits=Limits(stream_in_flight=IN_FLIGHT))  # fmt: skip
    running = SimilarityServer(config).start()
    yield running
    running.stop(grace_s=1.0)


@pytest.fixture(scope="module")
def image() -> bytes:
    buffer = io.BytesIO()
    make_scene(4, 0).image.save(buffer, format="PNG")
    return buffer.getvalue()


def _request(image_id: str, data: bytes) -> pb.SnippetRequest:
    return pb.SnippetRequest(labels=LABELS, image=pb.Image(id=image_id, data=data),
                             snippet_spec="grid:2x2")  # fmt: skip


def _readers() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(READER)]


def _wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@contextlib.contextmanager
def _encoder_held(server: SimilarityServer) -> Iterator[None]:
    """Keep the batcher's worker (the one torch thread) busy: nothing is encoded, so no
    stream gets an answer and every reader fills its stream's queue."""
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        held.set()
        release.wait(60)

    server.batcher.call(hold)
    assert held.wait(10)
    try:
        yield
    finally:
        release.set()


class _Sender:
    """A client's requests: ``requests``, then nothing (no half-close) until released,
    so the call stays open until it is cancelled, timed out or its channel closed."""

    def __init__(self, requests: list[pb.SnippetRequest]) -> None:
        self.requests = requests
        self.released = threading.Event()

    def __iter__(self) -> Iterator[pb.SnippetRequest]:
        yield from self.requests
        self.released.wait(60)


def _views(server: SimilarityServer) -> tuple[float, float]:
    """Views queued for the encoder so far (images + snippets), and views encoded."""
    sample = server.metrics.registry.get_sample_value
    queued = sample("cdul_clip_images_encoded_total") + sample("cdul_clip_snippets_encoded_total")
    return queued, sample("cdul_clip_batch_views_sum") or 0.0


def test_50_ended_streams_leave_no_reader_and_the_server_answers_correctly(server, image):
    address = f"127.0.0.1:{server.port}"
    stub = pb_grpc.SimilarityStub(grpc.insecure_channel(address))
    reference = stub.SnippetSimilarity(_request("ref", image), timeout=60)  # text now cached
    assert _wait_until(lambda: not _readers())
    queued_before, encoded_before = _views(server)
    senders: list[_Sender] = []
    # Five rounds of ten: the first four cancel their calls, the last one closes its
    # channel (the client going away); in each, four streams sent far more than fit in
    # the queue and never read an answer, the others sent one or none, and two of
    # those time out instead (a stalled client).
    for round_ in range(5):
        channel = grpc.insecure_channel(address)
        round_stub = pb_grpc.SimilarityStub(channel)
        with _encoder_held(server):
            calls, timed = [], []
            for k in range(10):
                count = 10 * IN_FLIGHT if k < 4 else k % 2
                sender = _Sender([_request(f"r{round_}-{k}-{i}", image) for i in range(count)])
                senders.append(sender)
                call = round_stub.ScoreStream(iter(sender), timeout=2.0 if k >= 8 else None)
                (timed if k >= 8 else calls).append(call)
            # Every call has its reader (the test would not see a leak otherwise)...
            assert _wait_until(lambda: len(_readers()) >= 10), _readers()
            time.sleep(0.3)  # ...and the busy ones have filled their queues.
            if round_ < 4:
                for call in calls:
                    call.cancel()
            else:
                channel.close()
        for call in timed:  # an answer may come before the deadline; the end must not
            with pytest.raises(grpc.RpcError) as ended:
                list(call)
            assert ended.value.code() in (grpc.StatusCode.DEADLINE_EXCEEDED,
                                          grpc.StatusCode.CANCELLED)  # fmt: skip
        channel.close()
    for sender in senders:
        sender.released.set()
    assert _wait_until(lambda: not _readers(), timeout_s=10.0), f"{len(_readers())} readers left"

    # The ended streams' work was dropped, not encoded for nobody.
    assert _wait_until(lambda: server.batcher.queued_views == 0)
    queued, encoded = _views(server)
    assert encoded - encoded_before < (queued - queued_before) / 2, (queued, encoded)

    # The server still answers, correctly, and a stream longer than its queue completes.
    with SimilarityClient([address], deadline_s=60) as client:
        images = [(f"after{i}", image) for i in range(3 * IN_FLIGHT)]
        answers = list(client.score_stream(images, LABELS, "grid:2x2", max_in_flight=16))
    assert sorted(a.id for a in answers) == sorted(i for i, _ in images)
    for answer in answers:
        assert not answer.error and answer.snippet_count == 4
        assert torch.allclose(torch.tensor(answer.alpha), torch.tensor(reference.alpha))
        assert torch.allclose(torch.tensor(answer.beta), torch.tensor(reference.beta))
    assert _wait_until(lambda: not _readers())


def test_the_batcher_skips_a_job_whose_future_was_cancelled():
    encoded: list[int] = []
    prepared: list[str] = []

    def encode(pixels: torch.Tensor) -> torch.Tensor:
        encoded.append(int(pixels.shape[0]))
        return pixels.flatten(1).sum(1, keepdim=True)

    def pixels() -> torch.Tensor:
        prepared.append("dropped job")
        return torch.zeros(3, 3, 2, 2)

    batcher = DynamicBatcher(encode, max_wait_ms=0)
    release = threading.Event()
    batcher.call(release.wait)  # the worker waits: both jobs queue up behind it
    dropped = batcher.submit(pixels, views=3)
    kept = batcher.submit(torch.ones(2, 3, 2, 2))
    assert dropped.cancel()
    release.set()
    assert torch.equal(kept.result(timeout=10), torch.full((2, 1), 12.0))
    batcher.close(timeout=10)
    assert dropped.cancelled() and prepared == [] and encoded == [2]
