"""Reaching an S3-compatible store: settings from the environment, the MinIO client,
and which failures are worth a retry. :mod:`cdul.core.storage.s3` builds the store on
these."""

from __future__ import annotations

import http.client
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import certifi
import urllib3
from minio import Minio
from minio.error import InvalidResponseError, S3Error, ServerError

from cdul.core.errors import ConfigError

#: A refused or unroutable endpoint should fail fast and be retried by our policy.
CONNECT_TIMEOUT_S = 5.0
#: Generous: completing a large multipart upload can take MinIO a while.
READ_TIMEOUT_S = 120.0

# S3 error codes that say "try again later" rather than "you asked for something wrong".
_RETRYABLE_CODES = frozenset(
    {
        "SlowDown",
        "ServiceUnavailable",
        "InternalError",
        "RequestTimeout",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "XMinioServerNotInitialized",
    }
)
#: S3 error codes that mean the credentials, not the request, are wrong.
CREDENTIAL_CODES = frozenset(
    {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken"}
)


def _transient_status(status: int) -> bool:
    # 501 Not Implemented is permanent; every other 5xx and 429 may heal.
    return status == 429 or (status >= 500 and status != 501)


def is_retryable(exc: BaseException) -> bool:
    """Whether ``exc`` is a transient failure worth another attempt."""
    if isinstance(exc, S3Error):
        return exc.code in _RETRYABLE_CODES or _transient_status(
            int(getattr(exc.response, "status", 0) or 0)
        )
    if isinstance(exc, ServerError):
        return _transient_status(exc.status_code)
    if isinstance(exc, InvalidResponseError):
        # A non-XML answer (often a proxy's 502/503 page); the SDK keeps the HTTP
        # status only in this private attribute.
        return _transient_status(int(getattr(exc, "_code", 0) or 0))
    if isinstance(exc, urllib3.exceptions.MaxRetryError):
        return exc.reason is None or is_retryable(exc.reason)
    if isinstance(exc, urllib3.exceptions.SSLError | ssl.SSLError):
        return False  # a certificate problem does not heal by waiting
    if isinstance(exc, urllib3.exceptions.HTTPError):
        return True  # refused/reset connections, timeouts, broken responses
    return isinstance(exc, ConnectionError | TimeoutError | http.client.HTTPException)


def describe_error(exc: BaseException) -> str:
    """A one-line error summary for logs and messages (never contains credentials:
    the SDK sends them in headers, which no exception message includes)."""
    if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
        exc = exc.reason
    if isinstance(exc, S3Error):
        text = f"S3 error {exc.code}: {exc.message}"
    else:
        text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 300 else text[:297] + "..."


def _env(environ: Mapping[str, str], *names: str) -> str | None:
    for name in names:
        value = environ.get(name, "").strip()
        if value:
            return value
    return None


@dataclass(frozen=True)
class S3Settings:
    """Where and how to reach the object store. Secrets are kept out of ``repr``."""

    endpoint: str  # the URL, e.g. http://127.0.0.1:9000
    netloc: str  # host[:port], what the SDK wants
    secure: bool
    region: str
    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)
    ca_bundle: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> S3Settings:
        """Read ``S3_ENDPOINT``, ``S3_ACCESS_KEY``/``AWS_ACCESS_KEY_ID``,
        ``S3_SECRET_KEY``/``AWS_SECRET_ACCESS_KEY``, optional
        ``S3_SESSION_TOKEN``/``AWS_SESSION_TOKEN``, ``S3_REGION`` (default us-east-1)
        and ``S3_CA_BUNDLE``. Missing or malformed values raise ConfigError naming
        the variable to set."""
        env = os.environ if environ is None else environ
        raw = _env(env, "S3_ENDPOINT")
        if raw is None:
            raise ConfigError(
                "S3_ENDPOINT is not set: set it to the object store's URL, "
                "e.g. http://127.0.0.1:9000 (https:// for TLS)"
            )
        endpoint = raw.rstrip("/")
        parts = urlsplit(endpoint)
        if "@" in parts.netloc:
            # Don't echo the value: it would print the credentials it contains.
            raise ConfigError(
                "S3_ENDPOINT must not contain credentials; set S3_ACCESS_KEY/S3_SECRET_KEY"
            )
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                f"S3_ENDPOINT={raw!r} is not a URL like http://host:9000 or https://host"
            )
        if parts.path or parts.query or parts.fragment:
            raise ConfigError(f"S3_ENDPOINT={raw!r} must be scheme://host[:port], no path")
        try:
            parts.port  # noqa: B018 - property access validates the port number
        except ValueError:
            raise ConfigError(f"S3_ENDPOINT={raw!r} has an invalid port") from None
        access_key = _env(env, "S3_ACCESS_KEY", "AWS_ACCESS_KEY_ID")
        if access_key is None:
            raise ConfigError("no S3 access key: set S3_ACCESS_KEY (or AWS_ACCESS_KEY_ID)")
        secret_key = _env(env, "S3_SECRET_KEY", "AWS_SECRET_ACCESS_KEY")
        if secret_key is None:
            raise ConfigError("no S3 secret key: set S3_SECRET_KEY (or AWS_SECRET_ACCESS_KEY)")
        ca_bundle = _env(env, "S3_CA_BUNDLE")
        if ca_bundle is not None and not Path(ca_bundle).is_file():
            raise ConfigError(f"S3_CA_BUNDLE={ca_bundle!r} is not a readable file")
        return cls(
            endpoint=endpoint,
            netloc=parts.netloc,
            secure=parts.scheme == "https",
            region=_env(env, "S3_REGION") or "us-east-1",
            access_key=access_key,
            secret_key=secret_key,
            session_token=_env(env, "S3_SESSION_TOKEN", "AWS_SESSION_TOKEN"),
            ca_bundle=ca_bundle,
        )


def make_client(settings: S3Settings) -> Minio:
    """A MinIO client whose HTTP pool fails fast and never retries by itself.

    The SDK's default pool waits 5 minutes to connect and retries 5 times inside
    urllib3; under our RetryPolicy that would multiply into tens of minutes.
    """
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT_S, read=READ_TIMEOUT_S),
        retries=False,
        maxsize=16,
        cert_reqs="CERT_REQUIRED",
        ca_certs=settings.ca_bundle or os.environ.get("SSL_CERT_FILE") or certifi.where(),
    )
    try:
        return Minio(
            settings.netloc,
            access_key=settings.access_key,
            secret_key=settings.secret_key,
            session_token=settings.session_token,
            secure=settings.secure,
            # Known region: the SDK then skips a GetBucketLocation round trip.
            region=settings.region,
            http_client=http,
        )
    except ValueError as exc:
        raise ConfigError(f"S3_ENDPOINT={settings.endpoint!r} rejected: {exc}") from exc
