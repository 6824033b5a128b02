"""The HTTP contract of ``POST /predictions/<model>``, as the handler sees it.

Pure functions on what TorchServe hands a handler, so they are tested without a
server. How a request reaches the handler in TorchServe 0.12 (read from its
frontend's ``InferenceRequestHandler`` and ``ts/service.py``, and pinned by the tests
on a real server):

* each request of a batch is a dict of *parameters*: a raw body arrives as
  ``"body"``; a ``multipart/form-data`` form gives one entry per field (a file under
  its field name, e.g. ``"data"``). A raw body must not be sent as
  ``application/x-www-form-urlencoded`` (curl's ``-d``/``--data-binary`` default):
  the frontend then parses the image as a form and answers 500 before any handler;
* query-string parameters reach the handler **only** on the routes
  ``/{model}/predict?...`` and ``/invocations?model_name={model}&...``; on
  ``/predictions/{model}`` the frontend drops the query string (it passes no decoder;
  pytorch/serve issue 989);
* values are ``bytes``, except that TorchServe decodes ``text/*`` parts to ``str`` and
  ``application/json`` parts to Python objects (``decode_input_request``);
* request headers are in ``context.get_all_request_header(idx)`` under the names the
  client sent (case preserved, so they are compared case-insensitively here).

Thresholds: each class has its own (the archive's per-class thresholds, which ``cdul
train`` chose without ground truth; an older archive's one threshold for every class).
A request may put one threshold on every class instead, strongest first: the
``threshold`` parameter (a multipart form field on any route, or the query string on
the two routes above), then the ``X-Threshold`` header (works on every route).

Every problem with one request raises :class:`RequestError`, which the handler turns
into that request's own 4xx while the rest of the batch is answered.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from cdul.core.errors import CdulError

__all__ = [
    "IMAGE_FIELDS",
    "THRESHOLD_HEADER",
    "THRESHOLD_PARAMETER",
    "RequestError",
    "error_body",
    "extract_image",
    "prediction_body",
    "resolve_threshold",
    "status_phrase",
]

#: Name of the per-request threshold override (query string or form field).
THRESHOLD_PARAMETER = "threshold"
#: Header carrying the same override, for clients that cannot touch the URL.
THRESHOLD_HEADER = "x-threshold"
#: Where the image is looked for, in order: the raw body, then usual multipart names.
IMAGE_FIELDS: tuple[str, ...] = ("body", "data", "file", "image")
# Parameters that are never the image: ours, and TorchServe's routing parameter of
# /invocations?model_name=... (which the frontend forwards with the query string).
_OPTION_FIELDS = frozenset({THRESHOLD_PARAMETER, "model_name"})


class RequestError(CdulError):
    """One request cannot be answered; ``status`` is its HTTP code (4xx)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def extract_image(request: Mapping[str, Any]) -> tuple[str, bytes]:
    """``(field name, image bytes)`` of one request, or :class:`RequestError`.

    A raw body wins; otherwise the first of :data:`IMAGE_FIELDS` present; otherwise the
    single remaining field. Two unnamed candidate fields are refused rather than
    guessed, since answering for the wrong one would be silently wrong.
    """
    name = next((f for f in IMAGE_FIELDS if f in request), None)
    if name is None:
        others = [f for f in request if f not in _OPTION_FIELDS]
        if not others:
            raise RequestError(
                "the request carries no image: send the image bytes as the raw body "
                "(Content-Type image/jpeg, image/png, ... or application/octet-stream; "
                "not a form-urlencoded body) or as a multipart file field named 'data'"
            )
        if len(others) > 1:
            raise RequestError(
                f"the request has several fields ({', '.join(sorted(others))}) and none is "
                f"named {' / '.join(IMAGE_FIELDS)}: send one image per request"
            )
        name = others[0]
    value = request[name]
    if isinstance(value, bytes | bytearray | memoryview):
        return name, bytes(value)
    if isinstance(value, str):
        raise RequestError(
            f"field {name!r} arrived as text ({len(value)} characters), not as a JPEG, PNG, "
            "WebP or BMP image; send the image bytes (e.g. Content-Type: image/jpeg)"
        )
    raise RequestError(
        f"field {name!r} arrived as JSON ({type(value).__name__}), not as a JPEG, PNG, "
        "WebP or BMP image; send the image bytes (e.g. Content-Type: image/jpeg)"
    )


def resolve_threshold(
    request: Mapping[str, Any], headers: Mapping[str, Any] | None
) -> float | None:
    """The one threshold a request puts on every class (see the module docstring for
    precedence); None: the archive's own per class."""
    if THRESHOLD_PARAMETER in request:
        return parse_threshold(request[THRESHOLD_PARAMETER], f"parameter {THRESHOLD_PARAMETER!r}")
    for key, value in (headers or {}).items():
        if isinstance(key, str) and key.lower() == THRESHOLD_HEADER:
            return parse_threshold(value, "header X-Threshold")
    return None


def parse_threshold(value: Any, source: str) -> float:
    """A number within [0, 1] from a parameter or header value, or :class:`RequestError`."""
    if isinstance(value, bytes | bytearray):
        value = bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, list) and len(value) == 1:  # a JSON-decoded form part
        value = value[0]
    try:
        threshold = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise RequestError(
            f"{source} must be a number between 0 and 1, got {_preview(value)}"
        ) from None
    if not math.isfinite(threshold) or not 0.0 <= threshold <= 1.0:
        raise RequestError(f"{source} must be between 0 and 1, got {threshold}")
    return threshold


def prediction_body(
    probabilities: Sequence[float], classes: Sequence[str], thresholds: Sequence[float]
) -> str:
    """The JSON answer for one image.

    ``{"probabilities": {class: p}, "labels": [...], "thresholds": {class: t},
    "threshold": t}``, classes in the archive's order; ``labels`` are the classes with
    ``p >= `` their threshold, in that order. A threshold of ``null`` never fires;
    ``threshold`` is the one every class shares, ``null`` when they differ.
    """
    probs = {name: float(p) for name, p in zip(classes, probabilities, strict=True)}
    per_class = dict(zip(classes, thresholds, strict=True))
    labels = [name for name, p in probs.items() if p >= per_class[name]]
    shown = {name: (None if math.isinf(t) else t) for name, t in per_class.items()}
    shared = set(shown.values())
    body = {"probabilities": probs, "labels": labels, "thresholds": shown,
            "threshold": shared.pop() if len(shared) == 1 else None}  # fmt: skip
    return json.dumps(body)


def error_body(status: int, message: str) -> str:
    """The JSON answer for a refused request, shaped like TorchServe's own errors."""
    kind = "PayloadTooLarge" if status == 413 else "BadRequest"
    return json.dumps({"code": status, "type": kind, "message": message})


def status_phrase(message: str, limit: int = 200) -> str:
    """``message`` made safe for an HTTP status line: one line of printable ASCII."""
    flat = " ".join(message.split())
    ascii_only = flat.encode("ascii", errors="replace").decode("ascii")
    return ascii_only if len(ascii_only) <= limit else ascii_only[: limit - 3] + "..."


def _preview(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
