"""The classifier behind a real TorchServe (Java 17) on loopback, token auth ON.

Every test shares the session's one server (see conftest.py). Issue 6's "Done when":
answers equal the in-process forward to 1e-5; garbage gets a 4xx with a message and
the server keeps answering; 16 concurrent clients all get correct answers; /metrics
parses as Prometheus text; a request without the key is refused, one with it answers.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client.parser import text_string_to_metric_families
from serving_support import (
    CLASSES,
    MAX_PIXELS,
    MODEL_NAME,
    Client,
    Response,
    ServedModel,
    encode,
    random_image,
)

from cdul.serving.local import LocalTorchServe

pytestmark = pytest.mark.slow
TOLERANCE = 1e-5


def assert_prediction(
    response: Response, expected: list[float], thresholds: float | list[float]
) -> None:
    """The answer's probabilities and, at ``thresholds`` (one for every class, or each
    class's; infinity: never), its labels."""
    assert response.status == 200, (response.status, response.body[:300])
    assert response.headers["content-type"].startswith("application/json")
    answer = response.json()
    assert list(answer["probabilities"]) == list(CLASSES)
    got = [answer["probabilities"][name] for name in CLASSES]
    assert got == pytest.approx(expected, abs=TOLERANCE)
    per_class = thresholds if isinstance(thresholds, list) else [thresholds] * len(CLASSES)
    shown = [None if math.isinf(t) else pytest.approx(t) for t in per_class]
    assert answer["thresholds"] == dict(zip(CLASSES, shown, strict=True))
    shared = per_class[0] if len(set(per_class)) == 1 else None
    assert answer["threshold"] == (None if shared is None else pytest.approx(shared))
    assert answer["labels"] == [
        c for c, p, t in zip(CLASSES, got, per_class, strict=True) if p >= t
    ]


def good_images() -> dict[str, tuple[bytes, str]]:
    """One image per accepted format and a few awkward modes/sizes."""
    return {
        "jpeg": (encode(random_image(1, (320, 240)), "JPEG", quality=90), "image/jpeg"),
        "png": (encode(random_image(2, (97, 131)), "PNG"), "image/png"),
        "webp": (encode(random_image(3, (200, 200)), "WEBP", quality=80), "image/webp"),
        "bmp": (encode(random_image(4, (64, 48)), "BMP"), "image/bmp"),
        "grey-png": (encode(random_image(5, (150, 100), "L"), "PNG"), "image/png"),
        "rgba-png": (encode(random_image(6, (120, 90), "RGBA"), "PNG"), "image/png"),
        "tiny-jpeg": (encode(random_image(7, (9, 7)), "JPEG"), "application/octet-stream"),
    }


@pytest.mark.parametrize("name", list(good_images()))
def test_prediction_equals_direct_forward(
    name: str, client: Client, served_model: ServedModel
) -> None:
    image, content_type = good_images()[name]
    response = client.predict(image, content_type)
    assert_prediction(
        response, served_model.expected(image), served_model.config.decision_thresholds()
    )


def test_multipart_upload_with_threshold_field(client: Client, served_model: ServedModel) -> None:
    image, _ = good_images()["jpeg"]
    boundary = "cdul-test-boundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="data"; '
            'filename="x.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
        ).encode()
        + image
        + (
            f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="threshold"\r\n\r\n'
            f"0.25\r\n--{boundary}--\r\n"
        ).encode()
    )
    response = client.predict(body, f"multipart/form-data; boundary={boundary}")
    assert_prediction(response, served_model.expected(image), 0.25)


@pytest.mark.parametrize(
    ("path", "headers", "threshold"),
    [
        # The header works on the main route.
        (f"/predictions/{MODEL_NAME}", {"X-Threshold": "0.8"}, 0.8),
        # TorchServe 0.12 forwards the query string to the handler only on these routes...
        (f"/{MODEL_NAME}/predict?threshold=0.3", {}, 0.3),
        (f"/invocations?model_name={MODEL_NAME}&threshold=0.3", {}, 0.3),
        # ...and not on /predictions/<model> (the frontend drops it): the archive's own
        # per-class thresholds apply (None here). Pinned here so a TorchServe that starts
        # forwarding it is noticed.
        (f"/predictions/{MODEL_NAME}?threshold=0.3", {}, None),
        # A parameter beats the header.
        (f"/{MODEL_NAME}/predict?threshold=0.0", {"X-Threshold": "1"}, 0.0),
    ],
)
def test_threshold_override(
    path: str,
    headers: dict[str, str],
    threshold: float | None,
    client: Client,
    served_model: ServedModel,
) -> None:
    image, content_type = good_images()["png"]
    response = client.predict(image, content_type, path=path, headers=headers)
    default = served_model.config.decision_thresholds()
    assert_prediction(
        response, served_model.expected(image), default if threshold is None else threshold
    )


def test_each_class_is_labelled_at_its_own_threshold(
    client: Client, served_model: ServedModel
) -> None:
    """The archive's per-class thresholds, over real TorchServe: a class labels an image
    exactly when its probability reaches that class's threshold, the last never."""
    thresholds = served_model.config.decision_thresholds()
    assert len(set(thresholds)) == len(CLASSES) and math.isinf(thresholds[-1])
    decided = []
    for image, content_type in good_images().values():
        answer = client.predict(image, content_type).json()
        expected = served_model.expected(image)
        assert answer["thresholds"][CLASSES[-1]] is None and CLASSES[-1] not in answer["labels"]
        decided += [p >= t for p, t in zip(expected, thresholds, strict=True)]
        assert_prediction(client.predict(image, content_type), expected, thresholds)
    assert any(decided) and not all(decided)  # both outcomes occur


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        (f"/{MODEL_NAME}/predict?threshold=abc", {}),
        (f"/{MODEL_NAME}/predict?threshold=1.5", {}),
        (f"/predictions/{MODEL_NAME}", {"X-Threshold": "-0.1"}),
        (f"/predictions/{MODEL_NAME}", {"X-Threshold": "nan"}),
    ],
)
def test_bad_threshold_is_refused(path: str, headers: dict[str, str], client: Client) -> None:
    image, content_type = good_images()["png"]
    response = client.predict(image, content_type, path=path, headers=headers)
    assert response.status == 400
    assert "threshold" in response.json()["message"].lower()


def png_bomb(width: int, height: int) -> bytes:
    """A valid PNG header claiming ``width x height`` pixels, with almost no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0"))


def garbage_bodies() -> dict[str, tuple[bytes, str, str]]:
    """name -> (body, content type, a word the error message must contain)."""
    jpeg = encode(random_image(8, (300, 200)), "JPEG")
    return {
        "random-bytes": (bytes(range(256)) * 8, "application/octet-stream", "not a jpeg"),
        "empty": (b"", "application/octet-stream", "empty"),
        "truncated-jpeg": (jpeg[: len(jpeg) // 2], "image/jpeg", "truncat"),
        "text-file": (b"class,labels\ncat,1\n", "text/plain", "text"),
        "text-as-octets": (b"just some words\n" * 4, "application/octet-stream", "not a jpeg"),
        "json": (b'{"image": "cat.jpg"}', "application/json", "json"),
        "oversized": (
            encode(random_image(9, (1200, 1000)), "JPEG"),
            "image/jpeg",
            f"over the limit of {MAX_PIXELS}",
        ),
        "decompression-bomb": (png_bomb(100_000, 100_000), "image/png", "pixel"),
        "gif": (encode(random_image(10, (32, 32)), "GIF"), "image/gif", "gif"),
    }


@pytest.mark.parametrize("name", list(garbage_bodies()))
def test_garbage_gets_4xx_and_server_keeps_answering(
    name: str, client: Client, served_model: ServedModel
) -> None:
    body, content_type, words = garbage_bodies()[name]
    response = client.predict(body, content_type)
    assert 400 <= response.status < 500, (response.status, response.body[:300])
    error = response.json()
    assert error["code"] == response.status
    assert words.lower() in error["message"].lower(), error["message"]
    assert response.reason  # the message is in the status line too
    image, content_type = good_images()["bmp"]
    assert_prediction(
        client.predict(image, content_type),
        served_model.expected(image),
        served_model.config.decision_thresholds(),
    )


def test_bad_items_in_a_batch_get_their_own_4xx(client: Client, served_model: ServedModel) -> None:
    """Sent together, good and bad requests share batches; only the bad ones fail."""
    images = good_images()
    garbage = garbage_bodies()
    mixed = [(name, *images[name], None) for name in images] + [
        (name, body, ctype, words) for name, (body, ctype, words) in garbage.items()
    ]
    with ThreadPoolExecutor(max_workers=len(mixed)) as pool:
        responses = list(pool.map(lambda item: client.predict(item[1], item[2]), mixed))
    for (name, body, _, words), response in zip(mixed, responses, strict=True):
        if words is None:
            assert_prediction(
                response, served_model.expected(body), served_model.config.decision_thresholds()
            )
        else:
            assert 400 <= response.status < 500, name
    shared = [int(r.headers.get("x-batch-size", "1")) for r in responses]
    assert max(shared) > 1, "no two requests were batched together"


def test_sixteen_concurrent_clients_all_correct(client: Client, served_model: ServedModel) -> None:
    images = [encode(random_image(100 + i, (160 + i, 120)), "JPEG") for i in range(48)]
    expected = served_model.expected_many(images)
    with ThreadPoolExecutor(max_workers=16) as pool:
        responses = list(pool.map(lambda image: client.predict(image, "image/jpeg"), images))
    thresholds = served_model.config.decision_thresholds()
    for response, probabilities in zip(responses, expected, strict=True):
        assert_prediction(response, probabilities, thresholds)
    assert max(int(r.headers["x-batch-size"]) for r in responses) > 1


def test_metrics_endpoint_is_prometheus_text(client: Client, torchserve: LocalTorchServe) -> None:
    image, content_type = good_images()["jpeg"]
    assert client.predict(image, content_type).status == 200
    response = Client(torchserve.metrics_url).request("GET", "/metrics")
    assert response.status == 200
    families = {f.name: f for f in text_string_to_metric_families(response.body.decode())}
    assert "ts_inference_requests" in families, sorted(families)
    served = [s.value for s in families["ts_inference_requests"].samples]
    assert sum(served) >= 1


def test_token_auth_refuses_requests_without_the_key(torchserve: LocalTorchServe) -> None:
    image, content_type = good_images()["jpeg"]
    anonymous = Client(torchserve.inference_url)
    refused = anonymous.predict(image, content_type)
    assert 400 <= refused.status < 500
    assert refused.json()["type"] == "InvalidKeyException"
    wrong = anonymous.predict(image, content_type, headers={"Authorization": "Bearer nope"})
    assert 400 <= wrong.status < 500
    keyed = anonymous.predict(image, content_type, headers=torchserve.auth_headers("inference"))
    assert keyed.status == 200
    # The management key is a different key: it does not open the inference API.
    cross = anonymous.predict(image, content_type, headers=torchserve.auth_headers("management"))
    assert 400 <= cross.status < 500


def test_management_api_serves_batching_settings_and_refuses_registration(
    torchserve: LocalTorchServe,
) -> None:
    management = Client(torchserve.management_url, torchserve.auth_headers("management"))
    assert 400 <= Client(torchserve.management_url).request("GET", "/models").status < 500
    described = management.request("GET", f"/models/{MODEL_NAME}")
    assert described.status == 200
    model = json.loads(described.body)[0]
    assert (model["batchSize"], model["maxBatchDelay"]) == (8, 50)
    assert [w["status"] for w in model["workers"]] == ["READY"]
    # enable_model_api=false: no model can be registered through the API.
    register = management.request("POST", "/models?url=other.mar")
    assert 400 <= register.status < 500


def test_serve_ready_probe_reads_the_workers_state(
    torchserve: LocalTorchServe, capsys: pytest.CaptureFixture[str]
) -> None:
    """`cdul serve-ready` (the k8s probes, the image's HEALTHCHECK) against the real server."""
    from cdul.cli import main

    probe = ["serve-ready", "--management-url", torchserve.management_url, "--model", MODEL_NAME]
    assert main([*probe, "--key-file", str(torchserve.key_file)]) == 0
    assert capsys.readouterr().out.strip() == f"{MODEL_NAME}: 1 of 1 workers READY"
    # Token auth on and no key (file missing): refused, so not ready.
    assert main([*probe, "--key-file", str(torchserve.key_file) + ".missing"]) == 1
    assert main(["serve-ready", "--management-url", torchserve.management_url, "--model",
                 "absent", "--key-file", str(torchserve.key_file)]) == 1  # fmt: skip
    assert main(["serve-ready", "--management-url", "http://127.0.0.1:9", "--timeout", "1"]) == 1
    assert capsys.readouterr().out.splitlines()[-1] == "cdul: 0 of 0 workers READY"
