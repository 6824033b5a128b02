"""The labeler's I/O helpers: waiting for the CLIP service, reading images ahead."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from cdul.clip_service.client import SimilarityClient, SimilarityServiceError
from cdul.core.embedding_codec import describe, model_identity
from cdul.core.errors import ConfigError
from cdul.labeler.sources import ImageSource

log = logging.getLogger(__name__)


def read_ahead(source: ImageSource, indices: list[int], workers: int = 4, ahead: int = 32
                ) -> Iterator[tuple[int, Future]]:  # fmt: skip
    """Read image bytes a few ahead of the sender, on a small thread pool."""
    with ThreadPoolExecutor(workers, thread_name_prefix="read") as pool:
        window: deque[tuple[int, Future]] = deque()
        it = iter(indices)
        for i in it:
            window.append((i, pool.submit(source.read, i)))
            if len(window) >= ahead:
                break
        while window:
            yield window.popleft()
            nxt = next(it, None)
            if nxt is not None:
                window.append((nxt, pool.submit(source.read, nxt)))


def check_service(client: SimilarityClient, wait_s: float):
    """Model info, waiting up to ``wait_s`` for the service to come up; all endpoints
    must serve the same model and weights."""
    deadline = time.monotonic() + wait_s
    infos = []
    for _ in client.endpoints:
        while True:
            try:
                infos.append(client.model_info())
                break
            except SimilarityServiceError as error:
                if error.code.name != "UNAVAILABLE" or time.monotonic() > deadline:
                    raise
                log.info("waiting for the CLIP service at %s", ", ".join(client.endpoints))
                time.sleep(1.0)
    # Weights, preprocessing and precision too: replicas that differ there give other
    # embeddings, and one run's scores (and stored embeddings) would mix them.
    served = {describe(model_identity(i)) for i in infos}
    if len(served) > 1:
        raise ConfigError(f"the CLIP endpoints serve different models: {'; '.join(sorted(served))}")
    return infos[0]
