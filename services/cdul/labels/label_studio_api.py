"""Pushing tasks with predictions into a Label Studio project through its HTTP API.

``cdul label-export RUN --format label-studio --push URL --project ID`` imports the
exported tasks (each with its prediction and review score) in pages of ``--push-page``
tasks, with a progress bar, instead of leaving Label Studio to ask a backend for every
task (its ``/predict`` calls time out after 100 s on large projects). Tasks already in
the project (by ``data.cdul_id``) are skipped, so a push that died part way is rerun.

Authentication: ``$LABEL_STUDIO_API_KEY``. A personal access token (Label Studio 1.2x's
default: a JWT refresh token, Account & Settings > Personal Access Token) is exchanged
for short-lived access tokens (``/api/token/refresh/``, renewed on a 401); any other key
is sent as a legacy ``Token``.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from typing import Any

from tqdm import tqdm

from cdul.core.errors import ConfigError

#: Tasks listed per page when looking for those already in a project.
LIST_PAGE = 1000
RETRIES = 3


def looks_like_jwt(key: str) -> bool:
    parts = key.split(".")
    return len(parts) == 3 and all(parts)


class LabelStudioApi:
    def __init__(self, url: str, api_key: str | None = None, timeout_s: float = 300) -> None:
        self.url = url.rstrip("/")
        key = api_key if api_key is not None else os.environ.get("LABEL_STUDIO_API_KEY")
        if not key:
            raise ConfigError("pushing to Label Studio needs its API key in $LABEL_STUDIO_API_KEY "
                              "(Account & Settings > Personal Access Token)")  # fmt: skip
        self.key = key
        self.timeout_s = timeout_s
        self.access: str | None = None

    def _authorization(self, renew: bool = False) -> str:
        if not looks_like_jwt(self.key):
            return f"Token {self.key}"
        if self.access is None or renew:
            answer = self._send("POST", "/api/token/refresh/", {"refresh": self.key}, None)
            self.access = answer["access"]
        return f"Bearer {self.access}"

    def _send(self, method: str, path: str, body: Any, authorization: str | None) -> Any:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if authorization:
            headers["Authorization"] = authorization
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data, headers, method=method)
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
            text = response.read()
        return json.loads(text) if text else None

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """One API call; a 401 renews the access token once, 5xx and connection errors
        are retried; anything else is a ConfigError naming the call."""
        renewed = False
        for attempt in range(RETRIES):
            try:
                return self._send(method, path, body, self._authorization())
            except urllib.error.HTTPError as error:
                detail = error.read()[:500].decode("utf-8", "replace")
                if error.code == 401 and looks_like_jwt(self.key) and not renewed:
                    self._authorization(renew=True)
                    renewed = True
                    continue
                if error.code < 500 or attempt == RETRIES - 1:
                    raise ConfigError(
                        f"Label Studio {method} {path}: HTTP {error.code} {detail}"
                    ) from None
            except (urllib.error.URLError, OSError) as error:
                if attempt == RETRIES - 1:
                    raise ConfigError(f"Label Studio at {self.url} unreachable: {error}") from None
            time.sleep(2**attempt)
        raise AssertionError("unreachable")

    def existing_ids(self, project: int) -> set[str]:
        """The ``data.cdul_id`` of every task in ``project``."""
        found: set[str] = set()
        page = 1
        while True:
            try:
                answer = self.call(
                    "GET", f"/api/tasks?project={project}&page={page}&page_size={LIST_PAGE}"
                )
            except ConfigError as error:
                if "HTTP 404" in str(error) and page > 1:  # past the last page
                    break
                raise
            tasks = answer["tasks"] if isinstance(answer, dict) else answer
            for task in tasks:
                image_id = (task.get("data") or {}).get("cdul_id")
                if isinstance(image_id, str):
                    found.add(image_id)
            if len(tasks) < LIST_PAGE:
                break
            page += 1
        return found


def push_tasks(
    api: LabelStudioApi, project: int, tasks: list[dict], page: int, progress: bool = True
) -> tuple[int, int]:
    """Import ``tasks`` (with their predictions) into ``project`` in pages; skip those
    whose ``cdul_id`` is there already. Returns (pushed, skipped)."""
    if page < 1:
        raise ConfigError(f"--push-page must be >= 1, got {page}")
    api.call("GET", f"/api/projects/{project}")  # a missing project or key fails here, early
    there = api.existing_ids(project)
    todo = [t for t in tasks if t["data"].get("cdul_id") not in there]
    with tqdm(total=len(todo), desc="pushing tasks", unit="task", disable=not progress) as bar:
        for start in range(0, len(todo), page):
            chunk = todo[start : start + page]
            api.call("POST", f"/api/projects/{project}/import", chunk)
            bar.update(len(chunk))
    return len(todo), len(tasks) - len(todo)
