"""``cdul label-studio-backend RUN``: a Label Studio ML backend serving a run's labels.

    cdul label-studio-backend file:///runs/demo --port 9090
    # Label Studio: Project > Settings > Model > Connect Model > http://HOST:9090

Label Studio's ML backend protocol (what its ``label-studio-ml-backend`` SDK serves):

``GET /health``
    ``{"status": "UP", "model_class": ...}``.
``POST /setup``
    Label Studio connecting a project; answers ``{"model_version": ...}``.
``POST /predict``
    ``{"tasks": [...], "label_config": ...}`` -> ``{"results": [{"result": [...],
    "score": ..., "model_version": ...}, ...]}``, one per task, in order
    (:mod:`cdul.label_studio.predictions`): the run's labels from memory, the CLIP
    service (``--endpoint``) for images the run does not hold. ``score`` is the review
    score: sort the Data Manager by it, ascending, to review the likeliest mistakes first.
``POST /webhook``
    Label Studio's webhook (it adds ``URL/webhook`` to the project when the backend is
    connected). Annotation events are written to the run (``RUN/reviews/events/``,
    :mod:`cdul.labels.reviews`) before the answer, so every event Label Studio was told
    succeeded is stored; ``cdul train RUN`` learns from them. Other actions get 200,
    ``START_TRAINING`` 201 with the command to run (training is a job of its own).
``GET /metrics``
    Prometheus metrics.

Basic auth (Label Studio's ML backend settings offer it): set ``BASIC_AUTH_USER`` and
``BASIC_AUTH_PASS`` and every route but ``/health`` needs them. Malformed requests get a
4xx naming the problem; the backend stays up.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hmac
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)

from cdul.core.errors import CdulError, ConfigError, StorageError
from cdul.core.pseudo_labels import read_pseudo_labels
from cdul.core.retry import RetryPolicy
from cdul.core.settings import add_flags, from_args, setting
from cdul.core.storage import open_store
from cdul.label_studio.new_images import ImageFetcher, NewImages
from cdul.label_studio.predictions import (
    Control,
    RunPredictions,
    choices_control,
    image_url,
    result,
)
from cdul.labels.reading import LabelReading
from cdul.labels.reviews import ANNOTATION_ACTIONS, parse_webhook, write_events

log = logging.getLogger("cdul.label_studio")

#: The largest request body read (a page of tasks with their data is far smaller).
MAX_BODY = 32 * 1024 * 1024
MODEL_CLASS = "CdulRunBackend"
#: Event writes retry briefly: Label Studio waits WEBHOOK_TIMEOUT (1 s by default) for the
#: answer and never retries, so a store that is down gets a prompt 503 in its log.
WEBHOOK_RETRY = RetryPolicy(attempts=3, initial_backoff_s=0.1, max_backoff_s=0.4)


@dataclass(frozen=True, kw_only=True)
class BackendConfig(LabelReading):
    """``--vector`` / ``--threshold(s)``: which labels the predictions hold."""

    run: str
    host: str = setting("0.0.0.0", "address to listen on")
    port: int = setting(9090, "port (Label Studio's examples use 9090)")
    endpoints: tuple[str, ...] = ()  # --endpoint, else $CDUL_CLIP_ENDPOINTS
    image_root: str | None = setting(
        None, "the directory Label Studio serves /data/local-files/?d= from (to read new images "
        "directly)", type=str, metavar="DIR",
    )  # fmt: skip
    label_studio_url: str | None = setting(
        None, "Label Studio's URL, to fetch new images by its /data/... URLs "
        "($LABEL_STUDIO_API_KEY)", type=str, metavar="URL",
    )  # fmt: skip


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "cdul_ls_backend_requests", "Requests answered, by route and status",
            ["route", "code"], registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "cdul_ls_backend_request_seconds", "Time to answer a request, by route", ["route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 30),
            registry=self.registry,
        )  # fmt: skip
        self.tasks = Counter(
            "cdul_ls_backend_tasks", "Tasks predicted, by source (run, clip, none, error)",
            ["source"], registry=self.registry,
        )  # fmt: skip
        self.events = Counter(
            "cdul_ls_backend_review_events", "Annotation events stored, by action",
            ["action"], registry=self.registry,
        )  # fmt: skip


class HttpError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class Backend:
    """The routes' work, independent of HTTP."""

    def __init__(self, config: BackendConfig) -> None:
        self.config = config
        self.store = open_store(config.run)
        self.events_store = open_store(config.run, retry=WEBHOOK_RETRY)
        labels = read_pseudo_labels(self.store)
        self.run = RunPredictions(labels, self.store, config)
        fetcher = ImageFetcher(config.image_root, config.label_studio_url)
        self.new_images = (
            NewImages(list(config.endpoints), labels, fetcher) if config.endpoints else None
        )
        self.metrics = Metrics()
        self.write_lock = threading.Lock()
        log.info("serving %d images of %s (%s; review scores from %s)", len(labels), config.run,
                 self.run.model_version, self.run.found.source)  # fmt: skip

    def health(self) -> dict[str, Any]:
        return {"status": "UP", "model_class": MODEL_CLASS, "model_version": self.run.model_version}

    def setup(self, body: dict[str, Any]) -> dict[str, Any]:
        schema = body.get("schema")
        if schema is not None:
            if not isinstance(schema, str):
                raise HttpError(400, "'schema' must be the labeling config's XML text")
            control = _control(schema)
            missing = sorted(set(self.run.labels.classes) - control.choices)
            if missing:
                log.warning("project %s's labeling config lacks the run's classes %s: they are "
                            "never predicted", body.get("project"), missing)  # fmt: skip
        return {"model_version": self.run.model_version}

    def predict(self, body: dict[str, Any]) -> dict[str, Any]:
        tasks, config_text = body.get("tasks"), body.get("label_config")
        if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
            raise HttpError(400, "'tasks' must be a list of Label Studio tasks")
        if not isinstance(config_text, str):
            raise HttpError(400, "'label_config' (the project's labeling config) is missing")
        control = _control(config_text)
        return {"results": [self._predict_one(control, task) for task in tasks]}

    def _predict_one(self, control: Any, task: dict[str, Any]) -> dict[str, Any]:
        row = self.run.find(task)
        if row is not None:
            self.metrics.tasks.labels("run").inc()
            return self.run.prediction(control, row)
        url = image_url(task)
        if self.new_images is None or url is None:
            self.metrics.tasks.labels("none").inc()
            log.warning("task %s: its image is not in the run%s", task.get("id"),
                        "" if url else " and it has no image URL")  # fmt: skip
            return {"result": [], "score": 0.0, "model_version": self.run.model_version}
        try:
            vectors = self.new_images.vectors(str(task.get("id", url)), url)
        except CdulError as error:  # one task's image: the page's other tasks still answer
            self.metrics.tasks.labels("error").inc()
            log.warning("task %s: %s", task.get("id"), error)
            return {"result": [], "score": 0.0, "model_version": self.run.model_version}
        chosen, scores = self.run.scored(vectors)
        self.metrics.tasks.labels("clip").inc()
        return {"result": result(control, chosen[0]), "score": scores[0],
                "model_version": self.run.model_version}  # fmt: skip

    def webhook(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        action = body.get("action")
        if not isinstance(action, str):
            raise HttpError(400, "a webhook body is a JSON object with an 'action'")
        if action == "START_TRAINING":
            return 201, {"status": "ok", "message": (
                f"reviewed labels are stored in {self.config.run}; train with: cdul train "
                f"{self.config.run} IMAGES (a job of its own)")}  # fmt: skip
        if action not in ANNOTATION_ACTIONS:
            return 200, {"status": "ignored", "action": action}
        try:
            events = parse_webhook(body)
        except ConfigError as error:
            raise HttpError(400, str(error)) from None
        with self.write_lock:  # one writer: keys sort by arrival
            key = write_events(self.events_store, events, source=f"label-studio webhook {action}")
        self.metrics.events.labels(action).inc(len(events))
        return 201, {"status": "stored", "events": len(events), "key": key}


def _control(label_config: str) -> Control:
    try:
        return choices_control(label_config)
    except ConfigError as error:  # the request's config: the caller's to fix
        raise HttpError(400, str(error)) from None


def _authorized(header: str | None) -> bool:
    user, password = os.environ.get("BASIC_AUTH_USER"), os.environ.get("BASIC_AUTH_PASS")
    if not user and not password:
        return True
    if not header or not header.startswith("Basic "):
        return False
    try:
        given = base64.b64decode(header[6:], validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return False
    return hmac.compare_digest(given, f"{user or ''}:{password or ''}")


def handler_for(backend: Backend) -> type[BaseHTTPRequestHandler]:
    posts = {"/setup": backend.setup, "/predict": backend.predict}

    class Handler(BaseHTTPRequestHandler):
        server_version = "cdul-label-studio-backend"
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s %s", self.address_string(), format % args)

        def _send(self, code: int, payload: Any, content_type: str = "application/json") -> None:
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            if code == 401:
                self.send_header("WWW-Authenticate", 'Basic realm="cdul"')
            self.end_headers()
            self.wfile.write(data)

        def _route(self, method: str) -> None:
            path = self.path.split("?", 1)[0].rstrip("/") or "/"
            started, code = time.perf_counter(), 500
            try:
                code, payload, content_type = self._answer(method, path)
            except HttpError as error:
                code, payload, content_type = error.code, {"error": str(error)}, "application/json"
            except StorageError as error:  # the run's store is down: Label Studio may retry
                code, payload, content_type = 503, {"error": str(error)}, "application/json"
            except CdulError as error:  # a request the run cannot answer
                code, payload, content_type = 422, {"error": str(error)}, "application/json"
            except Exception as error:
                log.exception("%s %s failed", method, path)
                code, payload = 500, {"error": f"{type(error).__name__}: {error}"}
                content_type = "application/json"
            self._send(code, payload, content_type)
            route = (
                path
                if path in ("/health", "/setup", "/predict", "/webhook", "/metrics")
                else "other"
            )
            backend.metrics.requests.labels(route, str(code)).inc()
            backend.metrics.latency.labels(route).observe(time.perf_counter() - started)

        def _answer(self, method: str, path: str) -> tuple[int, Any, str]:
            body = self._body() if method == "POST" else None
            if path not in ("/health", "/") and not _authorized(self.headers.get("Authorization")):
                raise HttpError(401, "basic auth required (BASIC_AUTH_USER / BASIC_AUTH_PASS)")
            if method == "GET" and path in ("/health", "/"):
                return 200, backend.health(), "application/json"
            if method == "GET" and path == "/metrics":
                return 200, generate_latest(backend.metrics.registry), CONTENT_TYPE_LATEST
            if method == "POST" and path == "/webhook":
                code, payload = backend.webhook(self._json(body))
                return code, payload, "application/json"
            if method == "POST" and path in posts:
                return 200, posts[path](self._json(body)), "application/json"
            known = path in posts or path in ("/webhook", "/health", "/", "/metrics")
            raise HttpError(
                405 if known else 404, f"{method} {path} is not a route of this backend"
            )

        def _body(self) -> bytes:
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                raise HttpError(400, "Content-Length is not a number") from None
            if length < 0 or length > MAX_BODY:
                self.close_connection = True
                raise HttpError(413, f"a request body may hold at most {MAX_BODY} bytes")
            return self.rfile.read(length)

        @staticmethod
        def _json(body: bytes | None) -> dict[str, Any]:
            try:
                parsed = json.loads(body or b"")
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise HttpError(400, f"the body is not JSON: {error}") from None
            if not isinstance(parsed, dict):
                raise HttpError(400, "the body must be a JSON object")
            return parsed

        def do_GET(self) -> None:
            self._route("GET")

        def do_POST(self) -> None:
            self._route("POST")

        def do_PUT(self) -> None:
            self._route("PUT")

        def do_DELETE(self) -> None:
            self._route("DELETE")

    return Handler


def serve(config: BackendConfig) -> ThreadingHTTPServer:
    """A started server (in a daemon thread); ``server.server_address`` has the port."""
    backend = Backend(config)
    server = ThreadingHTTPServer((config.host, config.port), handler_for(backend))
    server.daemon_threads = True
    server.backend = backend  # type: ignore[attr-defined]
    # A short poll: shutdown() returns within it.
    threading.Thread(
        target=server.serve_forever, args=(0.1,), name="ls-backend", daemon=True
    ).start()
    return server


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="the pseudo-label run URI (file://DIR or s3://BUCKET/RUN)")
    parser.add_argument(
        "--endpoint", action="append", default=None,
        help="CLIP service host:port for images the run does not hold; repeat for several "
        "(default: $CDUL_CLIP_ENDPOINTS, comma-separated; without any, such images get an "
        "empty prediction)",
    )  # fmt: skip
    add_flags(parser, BackendConfig)


def run(args: argparse.Namespace) -> int:
    import signal

    endpoints = args.endpoint or [
        e.strip() for e in os.environ.get("CDUL_CLIP_ENDPOINTS", "").split(",") if e.strip()
    ]
    config = from_args(BackendConfig, args, endpoints=tuple(endpoints))
    if bool(os.environ.get("BASIC_AUTH_USER")) != bool(os.environ.get("BASIC_AUTH_PASS")):
        raise ConfigError("set both BASIC_AUTH_USER and BASIC_AUTH_PASS, or neither")
    server = serve(config)
    host, port = server.server_address[:2]
    print(f"Label Studio ML backend for {config.run} on http://{host}:{port} "
          f"(connect it in the project's Settings > Model)", flush=True)  # fmt: skip
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with contextlib.suppress(KeyboardInterrupt):
        stop.wait()
    server.shutdown()  # lets a request in flight finish: its events are written first
    return 0
