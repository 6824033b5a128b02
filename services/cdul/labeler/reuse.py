"""Labeling a dataset again into a run: encode only the images the run does not hold.

A run that stores embeddings (``--store-embeddings``) knows each image by id and content
digest. Labeling the dataset again into it (after images were added, changed or removed)
answers every image whose id and bytes are unchanged from its stored embeddings, with
the text tower alone, and sends only the rest to the CLIP service; the shard is then
written again with all of them. A run without embeddings is labeled again in full when
its images changed (it cannot tell changed bytes: only added and removed ids).
"""

from __future__ import annotations

import logging
from typing import Any

from cdul.core import embeddings
from cdul.core.embedding_codec import content_digest
from cdul.core.errors import DatasetError
from cdul.core.storage import ObjectStore
from cdul.labeler.service import read_ahead
from cdul.labeler.sources import ImageSource

log = logging.getLogger(__name__)


class Reuse:
    """One shard's stored embeddings, and the digests of the images read so far."""

    def __init__(
        self,
        store: ObjectStore,
        key: str,
        identity: dict[str, Any] | None,
        source: ImageSource,
        indices: range,
    ) -> None:
        self.store, self.key, self.identity = store, key, identity
        self.source, self.indices = source, indices
        self.digests: dict[int, str] = {}
        self.pool: dict[str, tuple[str, bytes]] = {}

    def load(self) -> None:
        """Read the shard's embeddings object, if the run stores one: StorageError naming
        it when damaged, ConfigError naming both models when the service serves another."""
        if self.identity is None or not self.store.exists(self.key):
            return
        stored = embeddings.read(self.store, self.key, self.identity, "the CLIP service")
        self.pool = stored.by_id()

    def changes(self, ids: list[str], skipped: list[dict[str, str]]) -> str | None:
        """What differs between a finished shard (its ``ids`` and ``skipped`` images) and
        the dataset now (None: nothing)."""
        held = set(ids) | {s["image_id"] for s in skipped}
        now = {self.source.ids[i]: i for i in self.indices}
        new = [i for i in now if i not in held]
        gone = [i for i in held if i not in now]
        known = [now[i] for i in now if i in self.pool]
        self._digest(known)
        changed = [i for i in known if self.digests.get(i) != self.pool[self.source.ids[i]][0]]
        if not (new or gone or changed):
            return None
        what = f"{len(new)} new, {len(changed)} changed, {len(gone)} gone"
        if self.identity is None:
            what += "; the run stores no embeddings, so every image is encoded again"
        return what

    def reusable(self, indices: list[int]) -> dict[int, tuple[str, bytes]]:
        """``index -> (digest, embeddings)`` of the images whose id and bytes the run
        holds embeddings for."""
        if not self.pool:
            return {}
        known = [i for i in indices if self.source.ids[i] in self.pool]
        self._digest(known)
        found = {}
        for i in known:
            digest, blob = self.pool[self.source.ids[i]]
            if self.digests.get(i) == digest:
                found[i] = (digest, blob)
        return found

    def _digest(self, indices: list[int]) -> None:
        """Read and digest the images not digested yet (an unreadable one is left to the
        labeling pass, which reports it)."""
        todo = [i for i in indices if i not in self.digests]
        if todo:
            log.info("reading %d image(s) to compare them with the stored embeddings", len(todo))
        for i, future in read_ahead(self.source, todo):
            try:
                self.digests[i] = content_digest(future.result())
            except DatasetError:
                continue
