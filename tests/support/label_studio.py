"""A real Label Studio on loopback for the review round trip (tests/labeler).

Label Studio is a large Django application, so it is not a project dependency: the
test uses the ``label-studio`` executable named by ``$CDUL_LABEL_STUDIO`` or found on
PATH (`.ci/run` installs it into a venv of its own) and skips, saying so, without one.
Its legacy API tokens are off by default in 1.2x, so the client logs in as a browser
does (session cookie + CSRF token).
"""

from __future__ import annotations

import contextlib
import http.cookiejar
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

EMAIL, PASSWORD = "review@example.com", "cdul-review-password"


def executable() -> str | None:
    return os.environ.get("CDUL_LABEL_STUDIO") or shutil.which("label-studio")


#: ``pytestmark`` of a test module that starts a real Label Studio: slow, and skipped,
#: saying why, without the executable.
NEEDS_LABEL_STUDIO = [
    pytest.mark.slow,
    pytest.mark.timeout(600),
    pytest.mark.skipif(
        executable() is None,
        reason="no label-studio executable (set CDUL_LABEL_STUDIO or put it on PATH; "
        "`.ci/run` installs one)",
    ),
]


class LabelStudio:
    """A logged-in session against a running instance's HTTP API."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))
        self.opener.open(f"{base}/user/login/", timeout=30).read()  # sets the CSRF cookie
        form = {"email": EMAIL, "password": PASSWORD, "csrfmiddlewaretoken": self._csrf()}
        login = urllib.request.Request(f"{base}/user/login/", urllib.parse.urlencode(form).encode(),
                                       headers={"Referer": f"{base}/user/login/"})  # fmt: skip
        self.opener.open(login, timeout=30).read()

    def _csrf(self) -> str:
        return next(c.value for c in self.jar if c.name == "csrftoken")

    def call(self, method: str, path: str, body: Any = None) -> Any:
        request = urllib.request.Request(
            self.base + path,
            data=None if body is None else json.dumps(body).encode(),
            method=method,
            headers={
                "Content-Type": "application/json",
                "X-CSRFToken": self._csrf(),
                "Referer": self.base + "/",
            },
        )
        with self.opener.open(request, timeout=60) as response:
            data = response.read()
        return json.loads(data) if data else None


def start_backend(run_uri: str) -> tuple[subprocess.Popen, str]:
    """``cdul label-studio-backend RUN`` in its own process on a free loopback port: the
    process (its stdout a pipe: close it after stopping) and the backend's URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "cdul.cli", "label-studio-backend", run_uri, "--host",
         "127.0.0.1", "--port", "0"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert process.stdout is not None
    line = process.stdout.readline()  # the line naming the port, once it listens
    found = re.search(r"http://127\.0\.0\.1:\d+", line)
    if found is None:
        process.kill()
        process.wait(30)
        raise RuntimeError(f"the backend did not start: {line!r}")
    return process, found.group(0)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def running(
    workdir: Path, timeout_s: float = 240, env: dict[str, str] | None = None
) -> Iterator[LabelStudio]:
    """Start Label Studio (SQLite under ``workdir``; ``env`` added to its environment),
    log in, stop it afterwards."""
    port = _free_port()
    env = {**os.environ, "LABEL_STUDIO_USERNAME": EMAIL, "LABEL_STUDIO_PASSWORD": PASSWORD,
           "LABEL_STUDIO_BASE_DATA_DIR": str(workdir), "HOME": str(workdir),
           **(env or {})}  # fmt: skip
    log = (workdir / "label-studio.log").open("w")
    process = subprocess.Popen(
        [executable(), "start", "--no-browser", "--host", "127.0.0.1", "--port", str(port),
         "--data-dir", str(workdir / "data")],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )  # fmt: skip
    try:
        base, deadline = f"http://127.0.0.1:{port}", time.monotonic() + timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"Label Studio exited: {(workdir / 'label-studio.log').read_text()[-3000:]}"
                )
            with contextlib.suppress(urllib.error.URLError, OSError):
                if urllib.request.urlopen(f"{base}/health", timeout=5).status == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"Label Studio not up within {timeout_s} s")
            time.sleep(1)
        yield LabelStudio(base)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 15)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait(30)
        log.close()
