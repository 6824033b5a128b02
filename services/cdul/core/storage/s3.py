"""``s3://BUCKET/PREFIX``: objects in an S3-compatible store (MinIO) via the MinIO SDK.

Settings come only from the environment (see ``S3Settings.from_env`` in
:mod:`cdul.core.storage.s3_client`, with the client and the retry classification).

Atomic writes: S3 makes an object visible only when its single PUT, or the
CompleteMultipartUpload of a multipart upload, has succeeded; until then readers
keep seeing the previous version. No temp key is needed. A multipart upload that
fails or is killed leaves only an *incomplete upload*, which object listings never
show; the SDK aborts it when it can, and a bucket lifecycle rule
(``AbortIncompleteMultipartUpload``) should reclaim the ones a killed process left.

Retries: every call goes through ``S3Store._call``, which retries connection
failures, timeouts, 5xx answers and throttling (``SlowDown``) with exponential
backoff per ``RetryPolicy``, logging each retry at WARNING, and finally raises
StorageUnavailableError naming the endpoint, the operation, the key and the number
of attempts. Errors retrying cannot fix (missing key or bucket, access denied) map at
once to ObjectNotFoundError / StorageError. The HTTP client does no retries of its
own, so the policy's numbers are the real ones.
"""

from __future__ import annotations

import contextlib
import io
import logging
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, Self, TypeVar

import urllib3
from minio import Minio
from minio.error import MinioException, S3Error
from minio.helpers import MIN_PART_SIZE, check_bucket_name

from cdul.core.errors import (
    ConfigError,
    ObjectNotFoundError,
    StorageError,
    StorageUnavailableError,
)
from cdul.core.storage.base import ObjectStore, RetryPolicy, validate_key
from cdul.core.storage.local import atomic_write
from cdul.core.storage.s3_client import (
    CREDENTIAL_CODES,
    S3Settings,
    describe_error,
    is_retryable,
    make_client,
)

__all__ = ["DEFAULT_PART_SIZE", "S3Settings", "S3Store", "is_retryable", "make_client"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Multipart part size: 8 MiB keeps memory per upload small (the SDK buffers one
#: part per upload thread) and still allows objects up to 80 GB (10,000 parts).
DEFAULT_PART_SIZE = 8 * 1024 * 1024
_DOWNLOAD_CHUNK = 1024 * 1024


class S3Store(ObjectStore):
    """Objects under ``PREFIX/`` in bucket ``BUCKET``."""

    scheme = "s3"

    def __init__(
        self,
        client: Minio,
        settings: S3Settings,
        bucket: str,
        prefix: str = "",
        *,
        retry: RetryPolicy | None = None,
        part_size: int = DEFAULT_PART_SIZE,
    ) -> None:
        if part_size < MIN_PART_SIZE:
            raise ConfigError(f"S3 part size must be >= {MIN_PART_SIZE} bytes, got {part_size}")
        self._client = client
        self._settings = settings
        self._bucket = bucket
        self._prefix = prefix
        self._retry = retry or RetryPolicy()
        self._part_size = part_size

    @classmethod
    def from_uri(
        cls, uri: str, *, retry: RetryPolicy | None = None, create_bucket: bool = False
    ) -> Self:
        """Parse ``s3://BUCKET[/PREFIX]``, connect, and check the bucket exists
        (through the retry policy). The bucket is created only if ``create_bucket``."""
        if not uri.startswith("s3://"):
            raise ConfigError(f"not an s3:// URI: {uri!r}")
        bucket, _, prefix = uri[len("s3://") :].partition("/")
        prefix = prefix.rstrip("/")
        try:
            check_bucket_name(bucket, strict=True)  # what MinIO itself enforces
        except ValueError as exc:
            raise ConfigError(f"invalid bucket name {bucket!r} in {uri!r}: {exc}") from None
        if prefix:
            try:
                validate_key(prefix)
            except ConfigError as exc:
                raise ConfigError(f"invalid prefix in store URI {uri!r}: {exc}") from None
        settings = S3Settings.from_env()
        policy = retry if retry is not None else RetryPolicy.from_env()
        store = cls(make_client(settings), settings, bucket, prefix, retry=policy)
        store._check_bucket(create=create_bucket)
        return store

    # ---- naming

    @property
    def bucket(self) -> str:
        return self._bucket

    @property
    def endpoint(self) -> str:
        return self._settings.endpoint

    @property
    def uri(self) -> str:
        return f"s3://{self._bucket}/{self._prefix}" if self._prefix else f"s3://{self._bucket}"

    def _name(self, key: str) -> str:
        return f"{self._prefix}/{key}" if self._prefix else key

    def uri_for(self, key: str) -> str:
        return f"s3://{self._bucket}/{self._name(validate_key(key))}"

    # ---- the retry loop

    def _call(self, op: str, key: str | None, fn: Callable[[], T]) -> T:
        """Run ``fn`` under the retry policy; ``op`` and ``key`` name it in messages."""
        uri = self.uri_for(key) if key is not None else self.uri
        backoffs = self._retry.backoffs()
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                return fn()
            except Exception as exc:
                if not is_retryable(exc):
                    translated = self._translate(exc, op, uri)
                    if translated is exc:
                        raise
                    raise translated from exc
                delay = next(backoffs, None)
                if delay is None:
                    raise StorageUnavailableError(
                        f"S3 endpoint {self.endpoint} unavailable: {op} {uri} failed after "
                        f"{attempt} attempt(s) over {time.monotonic() - started:.1f}s; "
                        f"last error: {describe_error(exc)}"
                    ) from exc
                logger.warning(
                    "S3 %s %s at %s failed (attempt %d of %d): %s; retrying in %.2fs",
                    op,
                    uri,
                    self.endpoint,
                    attempt,
                    self._retry.attempts,
                    describe_error(exc),
                    delay,
                )
                time.sleep(delay)

    def _translate(self, exc: Exception, op: str, uri: str) -> Exception:
        """Map a permanent failure to the project's errors; unknown ones (bugs)
        are returned unchanged so that they propagate as they are."""
        if isinstance(exc, S3Error):
            if exc.code == "NoSuchKey":
                return ObjectNotFoundError(f"no object at {uri}")
            if exc.code == "NoSuchBucket":
                return ObjectNotFoundError(
                    f"bucket {self._bucket!r} does not exist at {self.endpoint}"
                )
            if exc.code in CREDENTIAL_CODES:
                return StorageError(
                    f"{op} {uri}: {self.endpoint} denied access ({exc.code}); check "
                    "S3_ACCESS_KEY / S3_SECRET_KEY and the bucket's policy"
                )
            return StorageError(f"{op} {uri} failed at {self.endpoint}: {describe_error(exc)}")
        if isinstance(exc, urllib3.exceptions.SSLError | ssl.SSLError) or (
            isinstance(exc, urllib3.exceptions.MaxRetryError)
            and isinstance(exc.reason, urllib3.exceptions.SSLError)
        ):
            return StorageError(
                f"{op} {uri}: TLS with {self.endpoint} failed ({describe_error(exc)}); "
                "set S3_CA_BUNDLE to the CA that signed the server's certificate"
            )
        if isinstance(exc, MinioException | urllib3.exceptions.HTTPError | OSError):
            return StorageError(f"{op} {uri} failed: {describe_error(exc)}")
        if isinstance(exc, ValueError):  # the SDK's own argument checks
            return ConfigError(f"{op} {uri}: {exc}")
        return exc

    def _check_bucket(self, *, create: bool) -> None:
        if self._call("check bucket", None, lambda: self._client.bucket_exists(self._bucket)):
            return
        if not create:
            raise ObjectNotFoundError(
                f"bucket {self._bucket!r} does not exist at {self.endpoint} "
                f"(needed by {self.uri}); create it first"
            )

        def make() -> None:
            try:
                self._client.make_bucket(self._bucket)
            except S3Error as exc:
                # A retried request whose first try did succeed lands here.
                if exc.code != "BucketAlreadyOwnedByYou":
                    raise

        self._call("create bucket", None, make)
        logger.info("created bucket %s at %s", self._bucket, self.endpoint)

    # ---- primitives

    def _write(self, key: str, data: bytes, content_type: str) -> None:
        name = self._name(key)
        self._call(
            "write",
            key,
            # A fresh stream per attempt: a retry must start from the first byte.
            lambda: self._client.put_object(
                self._bucket,
                name,
                io.BytesIO(data),
                len(data),
                content_type=content_type,
                part_size=self._part_size,
            ),
        )

    def _read(self, key: str) -> bytes:
        name = self._name(key)

        def get() -> bytes:
            response = self._client.get_object(self._bucket, name)
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

        return self._call("read", key, get)

    def _exists(self, key: str) -> bool:
        name = self._name(key)

        def stat() -> bool:
            try:
                self._client.stat_object(self._bucket, name)
            except S3Error as exc:
                if exc.code == "NoSuchKey":
                    return False
                raise
            return True

        return self._call("exists", key, stat)

    def _list(self, prefix: str) -> list[str]:
        # The root prefix ends in "/" so that the store at "run1" never sees "run10/...".
        root = f"{self._prefix}/" if self._prefix else ""

        def list_all() -> list[str]:
            # Collected inside the retried call: the listing is paged, and a failure
            # on page 3 must restart it rather than return a partial list.
            objects = self._client.list_objects(self._bucket, prefix=root + prefix, recursive=True)
            return [
                obj.object_name[len(root) :]
                for obj in objects
                if obj.object_name is not None and not obj.is_dir
            ]

        return self._call("list", None, list_all)

    def _delete(self, key: str) -> None:
        # S3 answers 204 for a missing key too, which is what delete() promises.
        name = self._name(key)
        self._call("delete", key, lambda: self._client.remove_object(self._bucket, name))

    def _write_file(self, key: str, local_path: Path) -> None:
        name = self._name(key)
        self._call(
            "write_file",
            key,
            # fput_object reopens the file on each attempt and streams it part by part.
            lambda: self._client.fput_object(
                self._bucket, name, str(local_path), part_size=self._part_size
            ),
        )

    def _read_file(self, key: str, local_path: Path) -> None:
        name = self._name(key)

        def download() -> None:
            response = self._client.get_object(self._bucket, name)

            def copy(handle: BinaryIO) -> None:
                for chunk in response.stream(_DOWNLOAD_CHUNK):
                    handle.write(chunk)

            try:
                # A temp file next to the target: a broken download leaves nothing.
                atomic_write(local_path, copy)
            finally:
                response.close()
                response.release_conn()

        self._call("read_file", key, download)

    @contextlib.contextmanager
    def _open_read(self, key: str) -> Iterator[BinaryIO]:
        name = self._name(key)
        response = self._call("open_read", key,
                              lambda: self._client.get_object(self._bucket, name))  # fmt: skip
        try:
            yield _Stream(response, self.uri_for(key))
        finally:
            response.close()
            response.release_conn()

    def _child(self, prefix: str) -> S3Store:
        return S3Store(
            self._client,
            self._settings,
            self._bucket,
            self._name(prefix),
            retry=self._retry,
            part_size=self._part_size,
        )


class _Stream(io.RawIOBase):
    """An S3 GET's body as a read-only stream; a broken connection mid-object is a
    StorageError naming it (the caller decides whether to start the object again)."""

    def __init__(self, response: Any, uri: str) -> None:
        self._response, self._uri, self._offset = response, uri, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            data = self._response.read(len(buffer))
        except Exception as exc:  # urllib3's ProtocolError, a reset connection
            raise StorageError(
                f"reading {self._uri} broke off after {self._offset} bytes: {describe_error(exc)}"
            ) from exc
        buffer[: len(data)] = data
        self._offset += len(data)
        return len(data)
