"""Stored image embeddings: encode each image once, label it again from text alone.

With ``cdul label --store-embeddings`` a run keeps, beside its pseudo labels, every
image's view embeddings (the whole image, then each snippet; a dense spec's cells),
normalised and rounded to float16, as clip-retrieval stores them::

    pseudo_labels/embeddings/shard-00000-of-00002.parquet

one row per labeled image: ``image_id``, ``content_digest`` (sha256 of the image's bytes:
a changed file is encoded again), ``views`` and ``view_embeddings`` (``views x D``
float16, little-endian, row-major). The object's schema metadata and the run's manifest
name the model they came from (:mod:`cdul.core.embedding_codec`): embeddings of two
models are never mixed, and a service that serves another model is refused.

A run that stores embeddings scores exactly the rounded vectors (the service rounds
before Eq. 1 when asked for them), so scores computed again from the stored embeddings
(:func:`cdul.core.method.similarity.view_scores`) equal the run's own; they differ from
a run without embeddings by the float16 rounding only.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from cdul.core.embedding_codec import check_same_model
from cdul.core.errors import ConfigError, ObjectNotFoundError, StorageError
from cdul.core.storage import ObjectStore

PREFIX = "pseudo_labels/embeddings"
_METADATA = b"cdul.embeddings"


def shard_key(index: int, count: int) -> str:
    return f"{PREFIX}/shard-{index:05d}-of-{count:05d}.parquet"


@dataclass
class StoredEmbeddings:
    """One embeddings object in memory, aligned by row."""

    ids: list[str]
    digests: list[str]
    blobs: list[bytes]
    identity: dict[str, Any]

    def by_id(self) -> dict[str, tuple[str, bytes]]:
        return {i: (d, b) for i, d, b in zip(self.ids, self.digests, self.blobs, strict=True)}


def to_table(ids: list[str], digests: list[str], blobs: list[bytes], dim: int) -> pa.Table:
    if not len(ids) == len(digests) == len(blobs):
        raise ConfigError("embeddings: ids, digests and embeddings differ in length")
    return pa.table({
        "image_id": pa.array(ids, type=pa.string()),
        "content_digest": pa.array(digests, type=pa.string()),
        "views": pa.array([len(b) // (2 * dim) for b in blobs], type=pa.int32()),
        "view_embeddings": pa.array(blobs, type=pa.large_binary()),
    })  # fmt: skip


def write(store: ObjectStore, key: str, table: pa.Table, identity: dict[str, Any]) -> None:
    """One atomic Parquet object with the model's identity in its schema metadata."""
    table = table.replace_schema_metadata({_METADATA: json.dumps(identity, sort_keys=True)})
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd", use_dictionary=False)
    store.write_bytes(key, buffer.getvalue())


def read(
    store: ObjectStore,
    key: str,
    expected: dict[str, Any] | None = None,
    expected_as: str = "the run's manifest",
) -> StoredEmbeddings:
    """An embeddings object, checked: StorageError naming it when it is missing, not
    Parquet, lacks a column or holds vectors of another size; ConfigError when it is
    another model's than ``expected``."""
    where = store.uri_for(key)
    try:
        data = store.read_bytes(key)
    except ObjectNotFoundError:
        missing = f"{where} is missing: the run's image embeddings are incomplete"
        raise StorageError(missing) from None
    try:
        table = pq.read_table(io.BytesIO(data))
        identity = json.loads((table.schema.metadata or {})[_METADATA])
    except (pa.ArrowInvalid, KeyError, ValueError) as error:
        raise StorageError(f"{where} is not a readable embeddings object: {error}") from None
    absent = [c for c in ("image_id", "content_digest", "view_embeddings")
              if c not in table.column_names]  # fmt: skip
    if absent:
        raise StorageError(f"{where} lacks column(s) {', '.join(absent)}")
    if expected is not None:
        check_same_model(identity, expected, where, expected_as)
    stored = StoredEmbeddings(
        ids=table.column("image_id").to_pylist(),
        digests=table.column("content_digest").to_pylist(),
        blobs=table.column("view_embeddings").to_pylist(),
        identity=identity,
    )
    size = 2 * int(identity.get("embed_dim", 0))
    bad = [i for i, b in zip(stored.ids, stored.blobs, strict=True) if not b or len(b) % size]
    if size == 0 or bad:
        raise StorageError(f"{where}: the embeddings of {bad[:3]} are not whole "
                           f"{identity.get('embed_dim')}-d float16 vectors")  # fmt: skip
    return stored
