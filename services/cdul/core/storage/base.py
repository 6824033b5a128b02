"""The object-store interface every backend implements, key rules and the retry policy.

Keys are ``/``-separated paths relative to a store's root (``pseudo_labels/manifest.json``).
The same key must mean the same object on every backend, so keys are checked here,
once, before any backend sees them.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from collections import Counter
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, BinaryIO, ClassVar, Self

from cdul.core.errors import ConfigError, StorageError
from cdul.core.retry import RetryPolicy

# A file:// writer stages data in temp files named like this, next to the target.
# list() never shows them and keys may not use the prefix, so a reader can never
# mistake a half-written temp file for an object.
TEMP_PREFIX = ".tmp-"

_JSON_CONTENT_TYPE = "application/json"
_TEXT_CONTENT_TYPE = "text/plain; charset=utf-8"
_BINARY_CONTENT_TYPE = "application/octet-stream"


def _bad_segments(path: str) -> str | None:
    """Why ``path`` is not a safe relative key path, or None when it is."""
    if "\\" in path:
        return "contains a backslash"
    if "\x00" in path:
        return "contains a NUL character"
    if path.startswith("/"):
        return "is absolute"
    segments = path.split("/")
    if ".." in segments:
        return "contains '..'"
    if "." in segments:
        return "contains '.'"
    if "" in segments:
        return "has an empty path segment ('//' or a trailing '/')"
    if any(segment.startswith(TEMP_PREFIX) for segment in segments):
        return f"uses the reserved temp-file prefix {TEMP_PREFIX!r}"
    return None


def validate_key(key: str) -> str:
    """Return ``key`` unchanged if it is a valid object key, else raise ConfigError.

    Rejected: empty keys, absolute keys, ``.``/``..`` segments, backslashes, empty
    segments (``a//b``, ``a/``) and segments starting with ``.tmp-``. Empty segments
    are refused because ``a//b`` is a distinct key in S3 but the same file as
    ``a/b`` on a file system.
    """
    if not isinstance(key, str) or not key:
        raise ConfigError(f"invalid object key {key!r}: it is empty")
    problem = _bad_segments(key)
    if problem:
        raise ConfigError(f"invalid object key {key!r}: it {problem}")
    return key


def validate_list_prefix(prefix: str) -> str:
    """Check a ``list()`` prefix: a key prefix, so a trailing ``/`` is allowed."""
    if prefix == "":
        return prefix
    if not isinstance(prefix, str):
        raise ConfigError(f"invalid list prefix {prefix!r}: not a string")
    body = prefix[:-1] if prefix.endswith("/") else prefix
    problem = _bad_segments(body) if body else "is only '/'"
    if problem:
        raise ConfigError(f"invalid list prefix {prefix!r}: it {problem}")
    return prefix


def validate_child_prefix(prefix: str) -> str:
    """Normalise a ``child()`` prefix (one trailing ``/`` is dropped) and check it."""
    body = prefix[:-1] if isinstance(prefix, str) and prefix.endswith("/") else prefix
    try:
        return validate_key(body)
    except ConfigError:
        raise ConfigError(f"invalid child prefix {prefix!r}: must be a non-empty key") from None


class ObjectStore(ABC):
    """A flat namespace of byte objects under one root URI.

    Public methods check keys and delegate to the ``_``-prefixed primitives that a
    backend implements. Every write is atomic: a reader sees the old object or the
    new one, never part of one. Stores are immutable and safe to share between
    threads.
    """

    #: URI scheme handled by the backend (``file``, ``s3``).
    scheme: ClassVar[str]

    @classmethod
    @abstractmethod
    def from_uri(
        cls, uri: str, *, retry: RetryPolicy | None = None, create_bucket: bool = False
    ) -> Self:
        """Open the store a URI names (the registry in ``open_store`` calls this)."""

    @property
    @abstractmethod
    def uri(self) -> str:
        """The URI of the store's root; ``open_store(store.uri)`` reopens it."""

    @abstractmethod
    def uri_for(self, key: str) -> str:
        """The full URI of ``key`` (for messages, manifests and logs)."""

    # ---- the primitives a backend implements (keys already validated)

    @abstractmethod
    def _write(self, key: str, data: bytes, content_type: str) -> None: ...

    @abstractmethod
    def _read(self, key: str) -> bytes: ...

    @abstractmethod
    def _exists(self, key: str) -> bool: ...

    @abstractmethod
    def _list(self, prefix: str) -> list[str]: ...

    @abstractmethod
    def _delete(self, key: str) -> None: ...

    @abstractmethod
    def _write_file(self, key: str, local_path: Path) -> None: ...

    @abstractmethod
    def _read_file(self, key: str, local_path: Path) -> None: ...

    @abstractmethod
    def _child(self, prefix: str) -> ObjectStore: ...

    @abstractmethod
    def _open_read(self, key: str) -> AbstractContextManager[BinaryIO]: ...

    @property
    def requests(self) -> Counter[str]:
        """Requests made of the store so far, by operation (``read``, ``write``,
        ``exists``, ``list`` pages of 1,000 keys as S3 pages them, ``open_read``,
        ``delete``; retries not counted): what a benchmark compares between layouts."""
        if not hasattr(self, "_requests"):
            self._requests: Counter[str] = Counter()
        return self._requests

    # ---- public API

    def write_bytes(self, key: str, data: bytes | bytearray | memoryview) -> None:
        """Store ``data`` under ``key`` atomically, replacing any previous object."""
        self.requests["write"] += 1
        self._write(validate_key(key), bytes(data), _BINARY_CONTENT_TYPE)

    def read_bytes(self, key: str) -> bytes:
        """The whole object; ObjectNotFoundError (naming the URI) if it is missing."""
        self.requests["read"] += 1
        return self._read(validate_key(key))

    def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""
        self.requests["exists"] += 1
        return self._exists(validate_key(key))

    def list(self, prefix: str = "") -> list[str]:
        """Every key starting with ``prefix`` (a plain string prefix, as in S3),
        recursively, sorted, relative to the store root."""
        keys = sorted(self._list(validate_list_prefix(prefix)))
        self.requests["list"] += max(1, -(-len(keys) // 1000))  # pages of 1,000
        return keys

    def delete(self, key: str) -> None:
        """Remove ``key``; deleting a missing key is not an error."""
        self.requests["delete"] += 1
        self._delete(validate_key(key))

    def write_text(self, key: str, text: str) -> None:
        """Store ``text`` encoded as UTF-8."""
        self.requests["write"] += 1
        self._write(validate_key(key), text.encode("utf-8"), _TEXT_CONTENT_TYPE)

    def read_text(self, key: str) -> str:
        """Read an object as UTF-8 text."""
        data = self.read_bytes(key)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise StorageError(f"{self.uri_for(key)} is not UTF-8 text: {exc}") from exc

    def write_json(self, key: str, obj: Any) -> None:
        """Store ``obj`` as UTF-8 JSON, keys sorted and indented, so that artefacts
        diff cleanly and the same content always gives the same bytes."""
        text = json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False) + "\n"
        self.requests["write"] += 1
        self._write(validate_key(key), text.encode("utf-8"), _JSON_CONTENT_TYPE)

    def read_json(self, key: str) -> Any:
        """Read and parse a JSON object."""
        text = self.read_text(key)
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise StorageError(f"{self.uri_for(key)} is not valid JSON: {exc}") from exc

    def write_file(self, key: str, local_path: str | os.PathLike[str]) -> None:
        """Upload a local file, streamed (never held in memory whole), atomically."""
        path = Path(local_path)
        if not path.is_file():
            raise StorageError(f"cannot store {self.uri_for(key)}: {path} is not a file")
        self.requests["write"] += 1
        self._write_file(validate_key(key), path)

    def read_file(self, key: str, local_path: str | os.PathLike[str]) -> None:
        """Download ``key`` to ``local_path`` (parents created), streamed. The local
        file is replaced atomically too, so a failed download leaves no partial file."""
        path = Path(local_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.requests["read"] += 1
        self._read_file(validate_key(key), path)

    def open_read(self, key: str) -> AbstractContextManager[BinaryIO]:
        """The object as a stream, read front to back without holding it whole (a tar
        shard): ``with store.open_read(key) as stream: stream.read(n)``.
        ObjectNotFoundError when it is missing; a failure mid-stream raises StorageError."""
        self.requests["open_read"] += 1
        return self._open_read(validate_key(key))

    def child(self, prefix: str) -> ObjectStore:
        """A store rooted at ``prefix`` inside this one (e.g. ``RUN/pseudo_labels``)."""
        return self._child(validate_child_prefix(prefix))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"
