"""How often and how patiently to retry a call that failed transiently.

One policy for every client that talks over the network: the object store (with
``CDUL_S3_RETRY_*`` overrides) and the CLIP service client.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from cdul.core.errors import ConfigError


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry an operation that failed transiently.

    ``attempts`` counts every try, the first included. The wait before try n+1 is
    ``initial_backoff_s * multiplier**(n-1)``, capped at ``max_backoff_s``, plus up to
    ``jitter`` of itself at random so that many shards failing together do not
    retry in lock-step. The defaults ride out a MinIO restart of about 20 s.
    """

    attempts: int = 8
    initial_backoff_s: float = 0.25
    max_backoff_s: float = 8.0
    multiplier: float = 2.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ConfigError(f"retry attempts must be >= 1, got {self.attempts}")
        if self.initial_backoff_s < 0 or self.max_backoff_s < 0:
            raise ConfigError("retry backoff times must be >= 0")
        if self.multiplier < 1:
            raise ConfigError(f"retry multiplier must be >= 1, got {self.multiplier}")
        if not 0 <= self.jitter <= 1:
            raise ConfigError(f"retry jitter must be within [0, 1], got {self.jitter}")

    def backoffs(self) -> Iterator[float]:
        """The waits between consecutive attempts (``attempts - 1`` values)."""
        delay = self.initial_backoff_s
        for _ in range(self.attempts - 1):
            capped = min(delay, self.max_backoff_s)
            yield capped * (1 + random.uniform(0, self.jitter))
            delay *= self.multiplier

    # Environment overrides, for operators who need more (or less) patience.
    ENV_VARS: ClassVar[dict[str, str]] = {
        "attempts": "CDUL_S3_RETRY_ATTEMPTS",
        "initial_backoff_s": "CDUL_S3_RETRY_INITIAL_BACKOFF_S",
        "max_backoff_s": "CDUL_S3_RETRY_MAX_BACKOFF_S",
        "multiplier": "CDUL_S3_RETRY_MULTIPLIER",
    }

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RetryPolicy:
        """The default policy, with any ``CDUL_S3_RETRY_*`` variable applied."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field_name, var in cls.ENV_VARS.items():
            raw = env.get(var, "").strip()
            if not raw:
                continue
            try:
                values[field_name] = int(raw) if field_name == "attempts" else float(raw)
            except ValueError:
                raise ConfigError(f"{var}={raw!r} is not a number") from None
        return cls(**values)
