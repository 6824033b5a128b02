"""``cdul serve-ready``: is a TorchServe model able to answer? Exit 0 if so, 1 if not.

TorchServe 0.12's ``/ping`` is not that signal: with the model's workers crash-looping
at start (seen in the container test: the worker's Python lacked a module) it answered
200 while every prediction waited in the queue until the client gave up. The management
API describes each worker's state; a model is ready once one of them is ``READY``.

Used by the Kubernetes startup/readiness probes (exec, inside the TorchServe container,
where the management API listens on loopback), by the image's HEALTHCHECK, and by
:class:`cdul.serving.local.LocalTorchServe` while it waits for a start.
"""

from __future__ import annotations

import argparse
import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

__all__ = ["configure", "management_headers", "ready_workers", "run"]

DEFAULT_MANAGEMENT_URL = "http://127.0.0.1:8081"
DEFAULT_MODEL = "cdul"
# Where the image's TorchServe writes its token-auth keys (its working directory).
DEFAULT_KEY_FILE = "/home/model-server/work/key_file.json"


def ready_workers(
    management_url: str,
    model: str,
    headers: Mapping[str, str] | None = None,
    timeout_s: float = 2.0,
) -> tuple[int, int]:
    """``(READY workers, all workers)`` of ``model``; ``(0, 0)`` if it cannot be described
    (server not up yet, model not registered, wrong key, an answer that is not JSON)."""
    url = f"{management_url}/models/{model}"
    request = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            described = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return 0, 0
    if not isinstance(described, list) or not described or not isinstance(described[0], dict):
        return 0, 0
    workers = [w for w in described[0].get("workers", []) if isinstance(w, dict)]
    return sum(w.get("status") == "READY" for w in workers), len(workers)


def management_headers(key_file: str | Path | None) -> dict[str, str]:
    """The management API's bearer header from TorchServe's ``key_file.json``; none
    without a readable file: with token auth off there is none to read, and with it on
    the API refuses the request, which reads as not ready (the JVM writes the file
    while it starts)."""
    if key_file is None:
        return {}
    try:
        data = json.loads(Path(key_file).read_text(encoding="utf-8"))
        return {"Authorization": f"Bearer {data['management']['key']}"}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--management-url", default=DEFAULT_MANAGEMENT_URL,
                        help="TorchServe's management API (default: %(default)s)")  # fmt: skip
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model name (default: %(default)s)")
    parser.add_argument(
        "--key-file",
        default=None,
        help="TorchServe's key_file.json, read if it exists (token auth on; the image's "
        f"is {DEFAULT_KEY_FILE})",
    )
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds per request")


def run(args: argparse.Namespace) -> int:
    headers = management_headers(args.key_file)
    ready, total = ready_workers(args.management_url, args.model, headers, args.timeout)
    print(f"{args.model}: {ready} of {total} workers READY")
    return 0 if ready else 1
