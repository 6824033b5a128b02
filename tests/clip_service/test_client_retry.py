"""The client's stream retries: dropped streams are reopened and unanswered images resent.

The server here is a real gRPC server with a scripted Similarity servicer instead of the
CLIP service: a real CLIP server cannot be made to drop a stream after exactly N answers,
again and again, and the client's bookkeeping is what is under test.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from cdul._proto.cdul.similarity.v1 import similarity_pb2 as pb
from cdul._proto.cdul.similarity.v1 import similarity_pb2_grpc as pb_grpc
from cdul.clip_service.client import (
    _END,
    SimilarityClient,
    SimilarityServiceError,
    _Attempt,
    _Work,
    label_set_ref,
)
from cdul.core.retry import RetryPolicy

FAST = RetryPolicy(attempts=3, initial_backoff_s=0.01, max_backoff_s=0.02)


class DroppingServicer(pb_grpc.SimilarityServicer):
    """Answers each image with its id; ends every stream with UNAVAILABLE after
    ``answers_per_stream`` answers (0: at once, every time)."""

    def __init__(self, answers_per_stream: int) -> None:
        self.answers_per_stream = answers_per_stream
        self.streams = 0
        self.sent: Counter[str] = Counter()
        self.lock = threading.Lock()

    def ScoreStream(self, request_iterator, context):
        with self.lock:
            self.streams += 1
        for answered, request in enumerate(request_iterator):
            if answered == self.answers_per_stream:
                context.abort(grpc.StatusCode.UNAVAILABLE, "replica restarting")
            with self.lock:
                self.sent[request.image.id] += 1
            yield pb.SnippetResponse(id=request.image.id, snippet_count=1)
        if self.answers_per_stream == 0:
            context.abort(grpc.StatusCode.UNAVAILABLE, "replica restarting")


@pytest.fixture
def serve():
    servers = []

    def start(servicer: DroppingServicer) -> str:
        server = grpc.server(ThreadPoolExecutor(max_workers=4))
        pb_grpc.add_SimilarityServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return f"127.0.0.1:{port}"

    yield start
    for server in servers:
        server.stop(0)


def test_a_stream_dropped_more_often_than_the_retry_budget_completes_while_it_progresses(serve):
    servicer = DroppingServicer(answers_per_stream=3)
    images = [(f"img{i:02d}", b"bytes") for i in range(30)]
    with SimilarityClient([serve(servicer)], retry=FAST) as client:
        answers = list(client.score_stream(images, label_set_ref(["a"]), max_in_flight=4))
    assert sorted(a.id for a in answers) == [i for i, _ in images]  # each exactly once
    assert servicer.streams >= 10  # dropped ~10 times against a budget of 2 retries
    assert set(servicer.sent.values()) == {1}


def test_a_stream_that_never_answers_gives_up_after_the_retry_budget(serve):
    servicer = DroppingServicer(answers_per_stream=0)
    client = SimilarityClient([serve(servicer)], retry=FAST)
    with client, pytest.raises(SimilarityServiceError, match=r"UNAVAILABLE.*replica restarting"):
        list(client.score_stream([("img", b"bytes")], label_set_ref(["a"])))
    assert servicer.streams == FAST.attempts


class DropsFirstStreamAfterOneAnswer(pb_grpc.SimilarityServicer):
    """The first stream: answers one image, then fails at once (UNAVAILABLE) while the
    client has nothing more to send; later streams answer everything."""

    def __init__(self) -> None:
        self.streams = 0
        self.lock = threading.Lock()

    def ScoreStream(self, request_iterator, context):
        with self.lock:
            self.streams += 1
            first = self.streams == 1
        for request in request_iterator:
            yield pb.SnippetResponse(id=request.image.id, snippet_count=1)
            if first:
                context.abort(grpc.StatusCode.UNAVAILABLE, "replica restarting")


@pytest.mark.timeout(60)
def test_images_arriving_after_a_dropped_stream_are_all_answered(serve):
    """The dropped stream's request iterator is still waiting for work on gRPC's sending
    thread when the next images arrive: what it takes then goes back to the work for the
    reopened stream, none is lost, and the end of the work is not swallowed either."""
    servicer = DropsFirstStreamAfterOneAnswer()
    dropped = threading.Event()

    def images():
        yield "img0", b"bytes"
        dropped.wait(5)  # the first stream has failed and been reopened by now
        time.sleep(0.5)
        yield from ((f"img{i}", b"bytes") for i in range(1, 6))

    with SimilarityClient([serve(servicer)], retry=FAST) as client:
        answers = []
        for answer in client.score_stream(images(), label_set_ref(["a"]), max_in_flight=4):
            answers.append(answer.id)
            dropped.set()
    assert sorted(answers) == [f"img{i}" for i in range(6)]
    assert servicer.streams == 2


def request(image_id: str) -> pb.SnippetRequest:
    return pb.SnippetRequest(image=pb.Image(id=image_id))


def test_a_closed_attempt_takes_nothing_so_no_image_is_lost():
    """The race behind the test above, made deterministic. A failed stream's sending
    thread is still waiting for work when the stream is closed; the next images and the
    end of the work arrive after that. It once took an image then and gave it back
    behind the end of the work, where no stream took it again (1 run in ~10 under load).
    Now a closed attempt takes nothing: every image is there, in order, for the next."""
    work = _Work(maxsize=8)
    dropped = _Attempt([], exhausted=False, slots=4, work=work)
    taken: list[pb.SnippetRequest] = []
    sender = threading.Thread(target=lambda: taken.extend(dropped.requests()))
    sender.start()
    time.sleep(0.2)  # gRPC's sending thread, waiting in take() (or not yet: same outcome)
    assert dropped.close() == ([], False)
    sender.join(5)
    assert not sender.is_alive() and taken == []
    for item in (request("img1"), request("img2"), _END):
        work.put(item)
    assert not dropped.claim(request("late"))  # closed: records nothing
    reopened = _Attempt([], exhausted=False, slots=4, work=work)
    assert [r.image.id for r in reopened.requests()] == ["img1", "img2"]
    assert reopened.exhausted and set(reopened.in_flight) == {"img1", "img2"}
