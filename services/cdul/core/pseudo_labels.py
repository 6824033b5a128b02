"""The pseudo-label artefact: the labeler writes it, the trainer reads it.

Layout under a run (``s3://BUCKET/RUN/`` or ``file://DIR/``)::

    pseudo_labels/shards/shard-00000-of-00002.parquet   one row per image
    pseudo_labels/shards/shard-00000-of-00002.json      that shard's manifest
    pseudo_labels/manifest.json                         the merged manifest

A shard is a Parquet table (pandas and pyarrow read it directly) with the columns
``image_id`` (string) and ``global``, ``alpha``, ``beta``, ``aggregate``, ``final``
and, when the dataset has ground truth, ``ground_truth`` (each a list<float32> of one
value per class). Because alpha and beta are stored, a zeta sweep needs no CLIP call
(:func:`reaggregate`). A shard's manifest is written only after its table, and the
merged manifest only after every shard manifest is checked, so a manifest is the mark
that what it names is complete (each object write is itself atomic).
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from cdul.core.errors import ConfigError, StorageError
from cdul.core.method.aggregation import aggregate, pseudo_label
from cdul.core.storage import ObjectStore

PREFIX = "pseudo_labels"
MANIFEST = f"{PREFIX}/manifest.json"
VECTORS = ("global", "alpha", "beta", "aggregate", "final")
FORMAT_VERSION = 1
# Settings that every shard of one run must share; merge refuses a shard that differs.
SHARED_SETTINGS = (
    "dataset", "classes", "template", "clip_model", "clip_pretrained", "snippet_spec", "zeta",
    "num_shards", "format_version",
)  # fmt: skip


def shard_name(index: int, count: int) -> str:
    if not 0 <= index < count:
        raise ConfigError(f"shard index {index} is outside 0..{count - 1}")
    return f"shard-{index:05d}-of-{count:05d}"


def shard_key(index: int, count: int, suffix: str) -> str:
    return f"{PREFIX}/shards/{shard_name(index, count)}.{suffix}"


@dataclass
class LabelManifest:
    """What a set of pseudo labels is: enough to reproduce or refuse to mix it."""

    dataset: str
    classes: list[str]
    template: str
    clip_model: str
    clip_pretrained: str
    snippet_spec: str
    zeta: float
    num_shards: int
    code_version: str
    created: str
    images: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)
    shards: list[str] = field(default_factory=list)
    shard_index: int | None = None
    evaluation: dict[str, Any] | None = None
    format_version: int = FORMAT_VERSION

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LabelManifest:
        try:
            return cls(**data)
        except TypeError as error:
            raise StorageError(f"malformed pseudo-label manifest: {error}") from None

    def differences(self, other: LabelManifest) -> list[str]:
        """The shared settings in which ``other`` differs from this manifest."""
        mine, theirs = self.to_json(), other.to_json()
        return [
            f"{k}: {mine[k]!r} != {theirs[k]!r}" for k in SHARED_SETTINGS if mine[k] != theirs[k]
        ]


@dataclass
class PseudoLabels:
    """Pseudo labels in memory: ``(N, C)`` tensors aligned with ``ids``."""

    ids: list[str]
    classes: list[str]
    vectors: dict[str, torch.Tensor]
    ground_truth: torch.Tensor | None
    manifest: LabelManifest

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.vectors[name]


def to_table(
    ids: list[str], vectors: dict[str, torch.Tensor], ground_truth: torch.Tensor | None
) -> pa.Table:
    """Build a shard table; every vector must be ``(len(ids), C)``."""
    n = len(ids)
    columns: dict[str, pa.Array] = {"image_id": pa.array(ids, type=pa.string())}
    items = [(name, vectors[name]) for name in VECTORS]
    if ground_truth is not None:
        items.append(("ground_truth", ground_truth))
    widths = {t.shape[1] for _, t in items if t.dim() == 2}
    for name, tensor in items:
        if tensor.dim() != 2 or tensor.shape[0] != n or len(widths) != 1:
            raise ConfigError(f"column {name!r} has shape {tuple(tensor.shape)}; expected ({n}, C)")
        flat = pa.array(tensor.detach().float().contiguous().numpy().reshape(-1), type=pa.float32())
        columns[name] = pa.FixedSizeListArray.from_arrays(flat, tensor.shape[1])
    return pa.table(columns)


def write_shard(store: ObjectStore, manifest: LabelManifest, table: pa.Table) -> None:
    """Write one shard: the table first, then its manifest (the completion mark)."""
    index = manifest.shard_index
    if index is None:
        raise ConfigError("a shard manifest needs shard_index")
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    store.write_bytes(shard_key(index, manifest.num_shards, "parquet"), buffer.getvalue())
    manifest.images = table.num_rows
    manifest.shards = [shard_name(index, manifest.num_shards)]
    store.write_json(shard_key(index, manifest.num_shards, "json"), manifest.to_json())


def shard_done(store: ObjectStore, index: int, count: int) -> LabelManifest | None:
    """The manifest of a finished shard, or None when it is missing or incomplete."""
    key = shard_key(index, count, "json")
    if not store.exists(key) or not store.exists(shard_key(index, count, "parquet")):
        return None
    return LabelManifest.from_json(store.read_json(key))


def read_table(store: ObjectStore, key: str) -> pa.Table:
    try:
        return pq.read_table(io.BytesIO(store.read_bytes(key)))
    except pa.ArrowInvalid as error:
        raise StorageError(
            f"{store.uri_for(key)} is not a readable Parquet shard: {error}"
        ) from None


def from_table(table: pa.Table, manifest: LabelManifest) -> PseudoLabels:
    width = len(manifest.classes)

    def column(name: str) -> torch.Tensor:
        values = table.column(name).combine_chunks().flatten().to_numpy(zero_copy_only=False)
        return torch.from_numpy(np.array(values, dtype=np.float32).reshape(-1, width))  # a copy

    truth = column("ground_truth") if "ground_truth" in table.column_names else None
    return PseudoLabels(
        ids=table.column("image_id").to_pylist(),
        classes=list(manifest.classes),
        vectors={name: column(name) for name in VECTORS},
        ground_truth=truth,
        manifest=manifest,
    )


def read_pseudo_labels(store: ObjectStore) -> PseudoLabels:
    """Read a merged run (``RUN/pseudo_labels/manifest.json`` and its shards)."""
    if not store.exists(MANIFEST):
        raise StorageError(
            f"no merged pseudo labels at {store.uri_for(MANIFEST)}: run the labeler (and "
            "'cdul label-merge' for a sharded run) first"
        )
    manifest = LabelManifest.from_json(store.read_json(MANIFEST))
    tables = [read_table(store, f"{PREFIX}/shards/{name}.parquet") for name in manifest.shards]
    labels = from_table(pa.concat_tables(tables), manifest)
    if len(labels) != manifest.images:
        raise StorageError(
            f"{store.uri_for(MANIFEST)} lists {manifest.images} images but its shards hold "
            f"{len(labels)}"
        )
    return labels


def reaggregate(labels: PseudoLabels, zeta: float) -> dict[str, torch.Tensor]:
    """Eq. 6-7 again for another zeta, from the stored alpha and beta (no CLIP call)."""
    agg = aggregate(labels["alpha"], labels["beta"], zeta)
    return {"aggregate": agg, "final": pseudo_label(labels["global"], agg)}
