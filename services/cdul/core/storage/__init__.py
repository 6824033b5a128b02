"""One small storage interface over ``file://PATH`` and ``s3://BUCKET/PREFIX``.

Every stage reads and writes its artefacts through ``open_store(uri)``::

    store = open_store("s3://cdul/run-7")           # or "file:///data/run-7"
    labels = store.child("pseudo_labels")
    labels.write_json("manifest.json", manifest)    # atomic on every backend
    store.write_file("model-store/cdul.mar", path)  # streamed, multipart on S3

S3 settings come from the environment only: ``S3_ENDPOINT``, ``S3_ACCESS_KEY``
(or ``AWS_ACCESS_KEY_ID``), ``S3_SECRET_KEY`` (or ``AWS_SECRET_ACCESS_KEY``),
optional ``S3_REGION``, ``S3_CA_BUNDLE``, ``S3_SESSION_TOKEN`` and the
``CDUL_S3_RETRY_*`` overrides of ``RetryPolicy``.
"""

from __future__ import annotations

import os

from cdul.core.errors import ConfigError
from cdul.core.storage.base import ObjectStore, RetryPolicy, validate_key
from cdul.core.storage.local import LocalStore
from cdul.core.storage.s3 import S3Settings, S3Store

__all__ = [
    "LocalStore",
    "ObjectStore",
    "RetryPolicy",
    "S3Settings",
    "S3Store",
    "open_location",
    "open_store",
    "register_scheme",
    "validate_key",
]

# URI scheme -> backend. A new backend registers itself here; open_store never
# grows an if-chain.
_SCHEMES: dict[str, type[ObjectStore]] = {
    LocalStore.scheme: LocalStore,
    S3Store.scheme: S3Store,
}


def register_scheme(scheme: str, backend: type[ObjectStore]) -> None:
    """Make ``open_store`` hand URIs starting with ``scheme://`` to ``backend``."""
    _SCHEMES[scheme] = backend


def open_store(
    uri: str, *, retry: RetryPolicy | None = None, create_bucket: bool = False
) -> ObjectStore:
    """Open the store ``uri`` names.

    ``retry`` applies to remote backends (default: ``RetryPolicy.from_env()``). A
    missing S3 bucket raises ObjectNotFoundError unless ``create_bucket`` is True.
    A bare path without ``scheme://`` is a local directory.
    """
    scheme, sep, _ = uri.partition("://")
    backend = _SCHEMES.get(scheme) if sep else LocalStore
    if backend is None:
        known = ", ".join(f"{name}://" for name in sorted(_SCHEMES))
        raise ConfigError(f"unsupported store URI {uri!r}: expected one of {known}")
    return backend.from_uri(uri, retry=retry, create_bucket=create_bucket)


def open_location(location: str) -> tuple[ObjectStore, str]:
    """The store holding one file (``out/a.csv``, ``file:///x/a.csv``) or object
    (``s3://bucket/dir/a.csv``), and its key there: a single file a user names (an
    export, a reviewed file, a thresholds file) is read and written through the storage
    layer too (atomic writes, S3 with its retries)."""
    scheme, sep, rest = location.partition("://")
    if not sep or scheme == "file":
        path = os.path.abspath(rest if sep else location)
        return open_store(os.path.dirname(path)), os.path.basename(path)
    parent, _, name = location.rstrip("/").rpartition("/")
    if not name or "/" not in rest.rstrip("/"):
        raise ConfigError(f"{location!r} names no object (expected {scheme}://BUCKET/KEY)")
    return open_store(parent), name
