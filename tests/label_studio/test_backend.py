"""``cdul label-studio-backend`` over real HTTP on loopback: the protocol's answers from a
run, garbage to every route, basic auth, and a SIGKILLed backend that loses no
annotation it acknowledged.
"""

from __future__ import annotations

import base64
import http.client
import json
import signal
import threading
import time
import urllib.error
import urllib.request

import pytest
from support import label_studio
from support.labels_run import CLASSES, IDS, LABEL_FREE, make_run

from cdul.core.pseudo_labels import read_pseudo_labels
from cdul.core.storage import open_store
from cdul.label_studio.backend import BackendConfig, serve
from cdul.labels.formats.label_studio import labeling_config
from cdul.labels.queue import priorities
from cdul.labels.reviews import EVENTS, read_reviews

XML = labeling_config(CLASSES)


def call(
    url: str,
    path: str,
    body: object = None,
    raw: bytes | None = None,
    method: str | None = None,
    headers: dict | None = None,
) -> tuple[int, object]:
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url + path,
        data=data,
        method=method,
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            text = response.read()
            code = response.status
    except urllib.error.HTTPError as error:
        text, code = error.read(), error.code
    try:
        return code, json.loads(text)
    except json.JSONDecodeError:
        return code, text.decode()


def annotation_event(
    annotation: int, image_id: str, names: list[str], action: str = "ANNOTATION_CREATED"
) -> dict:
    return {
        "action": action,
        "annotation": {
            "id": annotation,
            "task": 100 + annotation,
            "was_cancelled": False,
            "updated_at": f"2026-01-01T00:00:{annotation % 60:02d}Z",
            "completed_by": 1,
            "result": [
                {
                    "from_name": "labels",
                    "to_name": "image",
                    "type": "choices",
                    "value": {"choices": names},
                }
            ],
        },
        "task": {"id": 100 + annotation, "data": {"cdul_id": image_id, "image": "x"}},
        "project": {"id": 1},
    }


@pytest.fixture
def backend(tmp_path):
    run = make_run(tmp_path)
    server = serve(BackendConfig(run=run["uri"], host="127.0.0.1", port=0))
    yield run, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_predict_answers_from_the_run_in_task_order(backend):
    run, url = backend
    assert call(url, "/health") == (
        200,
        {
            "status": "UP",
            "model_class": "CdulRunBackend",
            "model_version": call(url, "/health")[1]["model_version"],
        },
    )
    code, setup = call(url, "/setup", {"project": "1.1700000000", "schema": XML})
    assert code == 200 and setup["model_version"].startswith("cdul cdul-tiny-rn grid:2x2 final")
    # By cdul_id, by the image URL's file name, and one the run does not hold.
    tasks = [
        {"id": 3, "data": {"cdul_id": IDS[2], "image": "/x"}},
        {"id": 1, "data": {"image": "/data/local-files/?d=images/a.png"}},
        {"id": 9, "data": {"image": "s3://bucket/elsewhere/zz.png"}},
    ]
    code, answer = call(url, "/predict", {"tasks": tasks, "label_config": XML})
    assert code == 200 and len(answer["results"]) == 3
    labels = read_pseudo_labels(open_store(run["uri"]))
    scores = priorities(labels, open_store(run["uri"])).image_scores().tolist()
    chosen = [[c for r in p["result"] for c in r["value"]["choices"]] for p in answer["results"]]
    assert chosen == [LABEL_FREE[2], LABEL_FREE[0], []]
    assert [p["score"] for p in answer["results"][:2]] == pytest.approx([scores[2], scores[0]])
    assert answer["results"][2]["score"] == 0.0  # no CLIP service given: an empty prediction
    # Another project's config: results go to its control, only the classes it lists.
    other = (
        '<View><Image name="img" value="$image"/>'
        '<Choices name="tags" toName="img"><Choice value="dog"/></Choices></View>'
    )
    code, answer = call(url, "/predict", {"tasks": tasks[1:2], "label_config": other})
    assert answer["results"][0]["result"] == [
        {"from_name": "tags", "to_name": "img", "type": "choices", "value": {"choices": ["dog"]}}
    ]


def test_webhooks_are_stored_and_other_actions_are_not(backend):
    run, url = backend
    assert call(url, "/webhook", annotation_event(7, "a.png", ["dog"]))[0] == 201
    assert call(url, "/webhook", {"action": "PROJECT_UPDATED", "project": {}})[0] == 200
    code, answer = call(url, "/webhook", {"action": "START_TRAINING", "project": {"id": 1}})
    assert code == 201 and "cdul train" in answer["message"]
    assert (
        call(url, "/webhook", {"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 7}]})[0]
        == 201
    )
    store = open_store(run["uri"])
    assert len(store.list(EVENTS)) == 2
    assert read_reviews(store).decisions == {}  # created, then deleted


@pytest.mark.parametrize("path", ["/predict", "/webhook", "/setup"])
@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\xff\xfe",
        b"not json",
        b"[1, 2]",
        b'"text"',
        b'{"tasks": "x", "label_config": 3}',
        b'{"action": 5}',
        b'{"tasks": [1], "label_config": "<View"}',
        b'{"schema": "<View/>"}',
        json.dumps(annotation_event(1, "a.png", ["dog"]) | {"task": None}).encode(),
        json.dumps(
            {
                "action": "ANNOTATION_CREATED",
                "annotation": {"id": 1, "result": 3},
                "task": {"data": {"cdul_id": "a.png"}},
            }
        ).encode(),
    ],
)
def test_garbage_gets_a_4xx_and_the_backend_stays_up(backend, path, raw):
    run, url = backend
    code, answer = call(url, path, raw=raw)
    if (
        path == "/setup" and code == 200
    ):  # /setup takes any object: Label Studio's fields are optional
        assert raw.startswith(b"{") and b"schema" not in raw
    else:
        assert 400 <= code < 500, (code, answer)
        assert isinstance(answer, dict) and answer["error"]
    assert call(url, "/health")[0] == 200
    assert not open_store(run["uri"]).list(EVENTS)  # nothing stored from garbage


def test_routes_methods_and_sizes(backend):
    _, url = backend
    assert call(url, "/nope")[0] == 404
    assert call(url, "/predict")[0] == 405  # GET
    assert call(url, "/health", method="DELETE")[0] == 405
    assert call(url, "/predict", raw=b"{}", headers={"Content-Length": str(10**9)})[0] in (413, 400)
    code, text = call(url, "/metrics")
    assert code == 200 and "cdul_ls_backend_requests_total" in text


def test_basic_auth(backend, monkeypatch):
    _, url = backend
    monkeypatch.setenv("BASIC_AUTH_USER", "ls")
    monkeypatch.setenv("BASIC_AUTH_PASS", "s3cret")
    good = {"Authorization": "Basic " + base64.b64encode(b"ls:s3cret").decode()}
    bad = {"Authorization": "Basic " + base64.b64encode(b"ls:wrong").decode()}
    assert call(url, "/health")[0] == 200  # Label Studio's probe needs none
    body = {"tasks": [], "label_config": XML}
    assert call(url, "/predict", body)[0] == 401
    assert call(url, "/predict", body, headers=bad)[0] == 401
    assert call(url, "/predict", body, headers={"Authorization": "Basic !!!"})[0] == 401
    assert call(url, "/predict", body, headers=good) == (200, {"results": []})


@pytest.mark.slow
def test_a_killed_backend_loses_no_acknowledged_annotation(tmp_path):
    run = make_run(tmp_path)
    store = open_store(run["uri"])
    acknowledged: list[int] = []
    lock = threading.Lock()

    def send(url: str, first: int, stop: threading.Event) -> None:
        n = first
        while not stop.is_set():
            try:
                code, _ = call(url, "/webhook", annotation_event(n, IDS[n % 3], [CLASSES[n % 3]]))
            except (urllib.error.URLError, OSError, http.client.HTTPException):
                # The backend is gone; a response the kill cut off (IncompleteRead) is
                # not an acknowledgement either.
                return
            if code == 201:
                with lock:
                    acknowledged.append(n)
            n += 4

    process, url = label_studio.start_backend(run["uri"])
    stop = threading.Event()
    senders = [threading.Thread(target=send, args=(url, k, stop)) for k in range(4)]
    for thread in senders:
        thread.start()
    time.sleep(1.5)
    process.send_signal(signal.SIGKILL)  # mid-delivery: no chance to finish anything
    process.wait(30)
    process.stdout.close()
    stop.set()
    for thread in senders:
        thread.join(30)
    assert len(acknowledged) > 20, "too few deliveries before the kill to mean anything"
    stored = set()
    for key in store.list(EVENTS):
        stored |= {e["annotation"] for e in store.read_json(key)["events"]}  # every object whole
    assert set(acknowledged) <= stored
    # A restarted backend goes on; the run's reviews read whole.
    process, url = label_studio.start_backend(run["uri"])
    try:
        assert call(url, "/webhook", annotation_event(10**6, "a.png", ["cat"]))[0] == 201
    finally:
        process.terminate()
        process.wait(30)
        process.stdout.close()
    assert read_reviews(store).decisions["a.png"] == ["cat"]


@pytest.mark.slow
def test_webhooks_on_s3_answer_503_while_the_store_is_down(tmp_path, s3_env, s3_server):
    """A webhook the store cannot take is not acknowledged (503, nothing claimed stored);
    once the store is back the next one is, and the earlier objects are all whole."""
    run = make_run(tmp_path)
    local, remote = open_store(run["uri"]), open_store(s3_env, create_bucket=True)
    for key in local.list(""):
        remote.write_bytes(key, local.read_bytes(key))
    server = serve(BackendConfig(run=s3_env, host="127.0.0.1", port=0))
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert call(url, "/webhook", annotation_event(1, "a.png", ["dog"]))[0] == 201
        s3_server.stop_listening()
        try:
            started = time.monotonic()
            code, answer = call(url, "/webhook", annotation_event(2, "b.png", ["cat"]))
            assert time.monotonic() - started < 5  # a prompt answer, not the jobs' patience
            assert code == 503, answer
            # Predictions come from memory: the store being down does not stop them.
            body = {"tasks": [{"id": 1, "data": {"cdul_id": "a.png"}}], "label_config": XML}
            assert call(url, "/predict", body)[0] == 200
        finally:
            s3_server.resume_listening()
        assert call(url, "/webhook", annotation_event(3, "b.png", ['fish & "chips" <x>']))[0] == 201
    finally:
        server.shutdown()
    decisions = read_reviews(remote).decisions
    assert decisions == {"a.png": ["dog"], "b.png": ['fish & "chips" <x>']}
