"""The pseudo-label artefact: the labeler writes it, the trainer reads it.

Layout under a run (``s3://BUCKET/RUN/`` or ``file://DIR/``)::

    pseudo_labels/shards/shard-00000-of-00002.parquet   one row per image
    pseudo_labels/shards/shard-00000-of-00002.json      that shard's manifest
    pseudo_labels/manifest.json                         the merged manifest
    pseudo_labels/evaluation.json, evaluation.csv       mAP / per-class AP (with ground truth)

A shard is a Parquet table (pandas and pyarrow read it directly) with the columns
``image_id`` (string) and ``global``, ``alpha``, ``beta``, ``aggregate``, ``final``
and, when the dataset has ground truth, ``ground_truth`` (each a list<float32> of one
value per class). ``aggregate`` and ``final`` follow the run's label recipe
(:mod:`cdul.core.method.recipes`, in the manifest; the paper's Eq. 6-7 by default);
a recipe's dataset-wide debiasing is a second pass at merge time: the per-class bias
goes into the merged manifest (``class_bias``) and reading applies it to ``final``.
Unless the labeler was told not to, the shards also hold the cosines (Eq. 1 and 3):
``global_cosine`` (one per class) and ``snippet_cosine`` (a list<float32> of the
image's snippets x classes, row-major), from which ``cdul label-sweep`` recomputes any
recipe without calling CLIP (:class:`Cosines`); alpha and beta alone give the paper's
rule for any zeta and plain max. A shard's manifest is written only after its table, and the
merged manifest only after every shard manifest is checked, so a manifest is the mark
that what it names is complete (each object write is itself atomic).

This module is the artefact alone: its layout, schema and I/O. Making the merged
manifest (:mod:`cdul.labels.merge`) and reading scores as labels
(:mod:`cdul.labels.reading`) are the tools that read runs.
"""

from __future__ import annotations

import io
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from cdul.core.errors import ConfigError, StorageError
from cdul.core.method.recipes import LabelRecipe, debias
from cdul.core.method.similarity import class_scores
from cdul.core.storage import ObjectStore

PREFIX = "pseudo_labels"
MANIFEST = f"{PREFIX}/manifest.json"
EVALUATION_JSON = f"{PREFIX}/evaluation.json"
EVALUATION_CSV = f"{PREFIX}/evaluation.csv"
VECTORS = ("global", "alpha", "beta", "aggregate", "final")
#: The stored vectors that are labels (alpha and beta are inputs of aggregate): global
#: (Eq. 2), aggregate (Eq. 6), final (Eq. 7, what the classifier learns from).
LABEL_VECTORS = ("global", "aggregate", "final")
FORMAT_VERSION = 1
# Settings that every shard of one run must share; merge refuses a shard that differs.
SHARED_SETTINGS = (
    "dataset", "classes", "template", "templates", "clip_model", "clip_pretrained",
    "snippet_spec", "zeta", "recipe", "num_shards", "limit", "format_version", "embeddings",
)  # fmt: skip
#: The optional cosine columns (Eq. 1 and 3) a recipe sweep reads.
COSINES = ("global_cosine", "snippet_cosine")
_SHARD_KEY = re.compile(rf"^{PREFIX}/shards/shard-(\d{{5}})-of-(\d{{5}})\.(json|parquet)$")


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
    limit: int | None = None
    """Only the first ``limit`` images of the dataset were labeled (None: all)."""
    format_version: int = FORMAT_VERSION
    review: dict[str, Any] | None = None
    """Set when a reviewer's corrections were imported (``cdul label-import``): where
    they came from and what they changed."""
    templates: list[str] | None = None
    """A prompt ensemble (template strings or open_clip set names) instead of ``template``."""
    recipe: dict[str, Any] | None = None
    """The label recipe but zeta (:class:`~cdul.core.method.recipes.LabelRecipe`); None
    (older runs) is the paper's."""
    logit_scale: float | None = None
    """CLIP's logit scale: stored cosines become probabilities with it (Eq. 2, 4)."""
    class_bias: list[float] | None = None
    """Merged runs whose recipe debiases: the per-class bias read labels are divided by."""
    thresholds: dict[str, list[float | None]] | None = None
    """Merged runs: per label vector, each class's label-free decision threshold (None:
    the class never fires), by ``threshold_rule`` (:mod:`cdul.core.method.thresholds`)
    on the vector as it is read; None in older runs (then computed on reading)."""
    threshold_rule: str | None = None
    embeddings: dict[str, Any] | None = None
    """Runs labeled with ``--store-embeddings`` (and their relabels): the identity of the
    model whose image embeddings are stored (:mod:`cdul.core.embeddings`)."""
    embeddings_run: str | None = None
    """A relabel: the run whose objects hold those embeddings (None: this run)."""
    relabeled_from: str | None = None
    """A relabel (``cdul relabel``): the run it was computed from, without encoding."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LabelManifest:
        try:
            return cls(**data)
        except TypeError as error:
            raise StorageError(f"malformed pseudo-label manifest: {error}") from None

    def settings(self) -> dict[str, Any]:
        """The settings every shard of one run shares (:data:`SHARED_SETTINGS`)."""
        data = self.to_json()
        return {k: data[k] for k in SHARED_SETTINGS}

    def label_recipe(self) -> LabelRecipe:
        return LabelRecipe(zeta=self.zeta, **(self.recipe or {}))

    def provenance(self) -> str | None:
        """Where the labels came from when not from encoding the images here (a relabel),
        and whether image embeddings are kept; None for a plain run."""
        if self.relabeled_from is not None:
            held = self.embeddings_run or self.relabeled_from
            where = "" if held == self.relabeled_from else f", whose embeddings are in {held}"
            return f"relabeled from {self.relabeled_from} (its stored image embeddings{where})"
        if self.embeddings is not None:
            return "image embeddings stored (cdul relabel can label other classes from them)"
        return None


@dataclass
class Cosines:
    """Every image's cosines (Eq. 1 and 3), the input of any label recipe."""

    global_cosine: torch.Tensor  # (N, C)
    snippet_cosine: torch.Tensor  # (sum of S_i, C), image after image
    counts: torch.Tensor  # (N,) snippets per image

    def padded(self, logit_scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Eq. 2 and 4 again: global ``(N, C)`` and snippet ``(N, S_max, C)`` class
        scores, and the ``(N, S_max)`` mask of real snippets."""
        n, width = self.global_cosine.shape
        longest = int(self.counts.max()) if n else 0
        valid = torch.arange(longest)[None, :] < self.counts[:, None]
        snippets = torch.zeros(n, longest, width)
        snippets[valid] = class_scores(self.snippet_cosine, logit_scale)
        return class_scores(self.global_cosine, logit_scale), snippets, valid


@dataclass
class PseudoLabels:
    """Pseudo labels in memory: ``(N, C)`` tensors aligned with ``ids``."""

    ids: list[str]
    classes: list[str]
    vectors: dict[str, torch.Tensor]
    ground_truth: torch.Tensor | None
    manifest: LabelManifest
    cosines: Cosines | None = None
    """Only when read with ``cosines=True`` from a run that stores them."""

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.vectors[name]


def to_table(
    ids: list[str],
    vectors: dict[str, torch.Tensor],
    ground_truth: torch.Tensor | None,
    cosines: Cosines | None = None,
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
    if cosines is not None:
        width = cosines.global_cosine.shape[1]
        if (
            cosines.global_cosine.shape != (n, width)
            or cosines.counts.shape != (n,)
            or (cosines.snippet_cosine.shape != (int(cosines.counts.sum()), width))
        ):
            raise ConfigError("cosines do not match the images: one row per image and snippet")
        glob = pa.array(cosines.global_cosine.float().numpy().reshape(-1), type=pa.float32())
        columns["global_cosine"] = pa.FixedSizeListArray.from_arrays(glob, width)
        # 64-bit offsets: a shard of patch specs can hold over 2**31 cosines.
        offsets = np.concatenate([[0], np.cumsum(cosines.counts.numpy() * width)]).astype(np.int64)
        flat = pa.array(cosines.snippet_cosine.float().numpy().reshape(-1), type=pa.float32())
        columns["snippet_cosine"] = pa.LargeListArray.from_arrays(pa.array(offsets), flat)
    return pa.table(columns)


def write_table(store: ObjectStore, key: str, table: pa.Table) -> None:
    """One Parquet object (zstd), written atomically: shards and the labeler's parts."""
    buffer = io.BytesIO()
    # No dictionary encoding: scores and ids are nearly all distinct, so pyarrow's default
    # tries a dictionary per column and falls back, 5x the write time for files 1.6x the
    # size (a 1,000-image shard with cosines: 21 ms and 1.8 MB vs 4 ms and 1.1 MB).
    pq.write_table(table, buffer, compression="zstd", use_dictionary=False)
    store.write_bytes(key, buffer.getvalue())


def write_shard(store: ObjectStore, manifest: LabelManifest, table: pa.Table) -> None:
    """Write one shard: the table first, then its manifest (the completion mark)."""
    index = manifest.shard_index
    if index is None:
        raise ConfigError("a shard manifest needs shard_index")
    write_table(store, shard_key(index, manifest.num_shards, "parquet"), table)
    manifest.images = table.num_rows
    manifest.shards = [shard_name(index, manifest.num_shards)]
    store.write_json(shard_key(index, manifest.num_shards, "json"), manifest.to_json())


def shard_done(store: ObjectStore, index: int, count: int) -> LabelManifest | None:
    """The manifest of a finished shard, or None when it is missing or incomplete."""
    key = shard_key(index, count, "json")
    if not store.exists(key) or not store.exists(shard_key(index, count, "parquet")):
        return None
    return LabelManifest.from_json(store.read_json(key))


def read_table(store: ObjectStore, key: str, columns: list[str] | None = None) -> pa.Table:
    """A shard or part; with ``columns``, only those of them it has."""
    try:
        data = io.BytesIO(store.read_bytes(key))
        if columns is not None:
            held = set(pq.read_schema(data).names)
            columns = [c for c in columns if c in held]
        return pq.read_table(data, columns=columns)
    except pa.ArrowInvalid as error:
        raise StorageError(
            f"{store.uri_for(key)} is not a readable Parquet shard: {error}"
        ) from None


def from_table(table: pa.Table, manifest: LabelManifest, cosines: bool = False) -> PseudoLabels:
    """The labels of ``table``; the manifest's ``class_bias`` (if any) applied to final."""
    width = len(manifest.classes)

    def column(name: str) -> torch.Tensor:
        values = table.column(name).combine_chunks().flatten().to_numpy(zero_copy_only=False)
        return torch.from_numpy(np.array(values, dtype=np.float32).reshape(-1, width))  # a copy

    truth = column("ground_truth") if "ground_truth" in table.column_names else None
    vectors = {name: column(name) for name in VECTORS}
    if manifest.class_bias is not None:
        vectors["final"] = debias(vectors["final"], torch.tensor(manifest.class_bias))
    stored = None
    if cosines and all(name in table.column_names for name in COSINES):
        lists = table.column("snippet_cosine").combine_chunks()
        counts = torch.from_numpy(lists.value_lengths().to_numpy(zero_copy_only=False) // width)
        stored = Cosines(column("global_cosine"), column("snippet_cosine"), counts.long())
    return PseudoLabels(
        ids=table.column("image_id").to_pylist(),
        classes=list(manifest.classes),
        vectors=vectors,
        ground_truth=truth,
        manifest=manifest,
        cosines=stored,
    )


def read_pseudo_labels(store: ObjectStore, cosines: bool = False) -> PseudoLabels:
    """Read a merged run (``RUN/pseudo_labels/manifest.json`` and its shards); with
    ``cosines``, also the stored cosines (None in a run that has none)."""
    if not store.exists(MANIFEST):
        raise StorageError(
            f"no merged pseudo labels at {store.uri_for(MANIFEST)}: run the labeler (and "
            "'cdul label-merge' for a sharded run) first"
        )
    manifest = LabelManifest.from_json(store.read_json(MANIFEST))
    tables = [read_table(store, f"{PREFIX}/shards/{name}.parquet") for name in manifest.shards]
    labels = from_table(pa.concat_tables(tables), manifest, cosines)
    if len(labels) != manifest.images:
        raise StorageError(
            f"{store.uri_for(MANIFEST)} lists {manifest.images} images but its shards hold "
            f"{len(labels)}"
        )
    return labels


def shard_counts(store: ObjectStore | set[str]) -> dict[int, set[int]]:
    """Shard objects present: ``num_shards -> {shard index, ...}`` (any suffix), in a
    store or in keys already listed from it."""
    found: dict[int, set[int]] = {}
    keys = store if isinstance(store, set) else store.list(f"{PREFIX}/shards/")
    for key in keys:
        if m := _SHARD_KEY.match(key):
            found.setdefault(int(m.group(2)), set()).add(int(m.group(1)))
    return found
