"""``cdul label-merge RUN``: check every shard of a run, evaluate, write the manifest.

A sharded run (``--num-shards S``, e.g. a Kubernetes Indexed Job) writes S shard
manifests; this step refuses a missing, unfinished or inconsistent shard, then writes
``evaluation.json/csv`` (when there is ground truth) and the merged
``pseudo_labels/manifest.json`` last. An unsharded ``cdul label`` run merges itself.

:func:`merge_shards` is the one way to make the merged manifest: it refuses a missing,
unfinished or inconsistent shard (:class:`ShardMergeError`) before writing anything.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import torch

from cdul.core.errors import StorageError
from cdul.core.method.recipes import debias
from cdul.core.method.thresholds import DEFAULT_RULE
from cdul.core.pseudo_labels import (
    LABEL_VECTORS,
    MANIFEST,
    PREFIX,
    VECTORS,
    LabelManifest,
    PseudoLabels,
    from_table,
    read_table,
    shard_counts,
    shard_key,
    shard_name,
)
from cdul.core.settings import differences
from cdul.core.storage import ObjectStore, open_store
from cdul.labels.evaluation import RunEvaluation, evaluate_labels, store_evaluation, table
from cdul.labels.reading import label_free_thresholds, thresholds_to_json

log = logging.getLogger(__name__)


class ShardMergeError(StorageError):
    """Shards cannot be merged: one is missing, unfinished or made with other settings."""


def merge_shards(
    store: ObjectStore,
    num_shards: int | None = None,
    evaluate: Callable[[PseudoLabels], dict[str, Any] | None] | None = None,
) -> PseudoLabels:
    """Check every shard of a run and write the merged manifest; return the merged labels.

    ``num_shards`` defaults to the count in the shard names (which must agree). Every
    shard ``0..num_shards-1`` must be finished (its manifest written), agree with shard
    0 in every :data:`~cdul.core.pseudo_labels.SHARED_SETTINGS` entry, hold as many rows
    as its manifest says, and no image id may appear twice; otherwise
    :class:`ShardMergeError` says what is wrong and nothing is written.
    ``evaluate(labels)``, when given, returns what goes into the manifest's
    ``evaluation`` (it may write files beside the labels first). The merged manifest's
    ``created`` is the latest shard's, so merging twice gives the same bytes.
    """
    where = store.uri_for(PREFIX)
    # One listing (paged) tells which shard objects exist: then two reads per shard, so
    # a merge of 10^4 tar-shard outputs is ~2 x 10^4 requests, not one probe per object.
    present = set(store.list(f"{PREFIX}/shards/"))
    num_shards = num_shards if num_shards is not None else _shard_count(present, where)
    manifests = _finished_shards(store, present, num_shards, where)
    _check_agreement(manifests, num_shards, where)
    tables = _shard_tables(store, manifests, num_shards, where)
    merged = _merged_manifest(manifests, num_shards)
    labels = from_table(pa.concat_tables(tables), merged)
    bias = merged.label_recipe().bias(labels["final"])
    if bias is not None:  # the recipe's second pass: stored, and applied as reading applies it
        merged.class_bias = bias.tolist()
        labels.vectors["final"] = debias(labels["final"], torch.tensor(merged.class_bias))
    # Each label vector's label-free thresholds, on the scores as they are read.
    merged.threshold_rule = DEFAULT_RULE
    merged.thresholds = {
        name: thresholds_to_json(label_free_thresholds(labels[name])) for name in LABEL_VECTORS
    }
    if evaluate is not None:
        merged.evaluation = evaluate(labels)
    store.write_json(MANIFEST, merged.to_json())
    return labels


def _shard_count(present: set[str], where: str) -> int:
    """The one shard count the shard names agree on."""
    counts = sorted(shard_counts(present))
    if not counts:
        raise ShardMergeError(f"no pseudo-label shards under {where}: run 'cdul label' first")
    if len(counts) > 1:
        splits = ", ".join(f"of-{n:05d}" for n in counts)
        raise ShardMergeError(
            f"{where} holds shards of different splits ({splits}); give --num-shards or "
            "use a fresh run URI"
        )
    return counts[0]


def _finished_shards(
    store: ObjectStore, present: set[str], num_shards: int, where: str
) -> list[LabelManifest]:
    """Every shard's manifest, in order; refuses a missing or unfinished one."""
    done = [all(shard_key(i, num_shards, suffix) in present for suffix in ("json", "parquet"))
            for i in range(num_shards)]  # fmt: skip
    missing = [shard_name(i, num_shards) for i, ok in enumerate(done) if not ok]
    if missing:
        raise ShardMergeError(
            f"cannot merge {where}: {len(missing)} of {num_shards} shard(s) missing or unfinished "
            f"({', '.join(missing)}); run 'cdul label --shard-index I --num-shards "
            f"{num_shards}' for each"
        )
    return [
        LabelManifest.from_json(store.read_json(shard_key(i, num_shards, "json")))
        for i in range(num_shards)
    ]


def _check_agreement(manifests: list[LabelManifest], num_shards: int, where: str) -> None:
    """Each manifest names its own place and shares shard 0's settings."""
    first = manifests[0]
    for index, manifest in enumerate(manifests):
        name = shard_name(index, num_shards)
        if manifest.shard_index != index or manifest.num_shards != num_shards:
            raise ShardMergeError(
                f"cannot merge {where}: the manifest of {name} says shard "
                f"{manifest.shard_index} of {manifest.num_shards}"
            )
        changed = differences(first.settings(), manifest.settings(),
                              stored_as=shard_name(0, num_shards), current_as=name)  # fmt: skip
        if changed:
            raise ShardMergeError(
                f"cannot merge {where}: {name} was made with other settings than "
                f"{shard_name(0, num_shards)}: {'; '.join(changed)}"
            )


def _shard_tables(
    store: ObjectStore, manifests: list[LabelManifest], num_shards: int, where: str
) -> list[pa.Table]:
    """Each shard's table, checked against its manifest; no image id in two shards."""
    tables = []
    seen: set[str] = set()
    for index, manifest in enumerate(manifests):
        key = shard_key(index, num_shards, "parquet")
        shard = read_table(store, key)
        _check_shard_table(store.uri_for(key), shard, manifest)
        ids = shard.column("image_id").to_pylist()
        repeated = seen.intersection(ids)
        if repeated:
            raise ShardMergeError(
                f"cannot merge {where}: image id(s) {sorted(repeated)[:5]} appear in more than "
                f"one shard (the last: {shard_name(index, num_shards)})"
            )
        seen.update(ids)
        tables.append(shard.replace_schema_metadata(None))
    with_truth = sum("ground_truth" in t.column_names for t in tables)
    if 0 < with_truth < len(tables):  # e.g. tar shards whose samples lack label files
        log.warning("%s: only %d of %d shards have ground truth; merged without it", where,
                    with_truth, len(tables))  # fmt: skip
        tables = [t.drop_columns(["ground_truth"]) if "ground_truth" in t.column_names else t
                  for t in tables]  # fmt: skip
    return tables


def _check_shard_table(uri: str, shard: pa.Table, manifest: LabelManifest) -> None:
    columns = set(shard.column_names)
    absent = [c for c in ("image_id", *VECTORS) if c not in columns]
    if absent:
        raise ShardMergeError(f"{uri} lacks column(s) {', '.join(absent)}")
    if shard.num_rows != manifest.images:
        raise ShardMergeError(
            f"{uri} holds {shard.num_rows} rows but its manifest says {manifest.images} images"
        )
    width = len(manifest.classes)
    for name in VECTORS:
        kind = shard.schema.field(name).type
        if not pa.types.is_fixed_size_list(kind) or kind.list_size != width:
            raise ShardMergeError(f"{uri}: column {name!r} is {kind}, expected {width} per row")


def _merged_manifest(manifests: list[LabelManifest], num_shards: int) -> LabelManifest:
    """Shard 0's settings; the shards' counts and skipped images together."""
    skipped: dict[tuple[str, str], dict[str, str]] = {}
    for manifest in manifests:
        for item in manifest.skipped:
            skipped.setdefault((item.get("image_id", ""), item.get("path", "")), item)
    return LabelManifest.from_json(
        {
            **manifests[0].to_json(),
            "images": sum(m.images for m in manifests),
            "skipped": list(skipped.values()),
            "shards": [shard_name(i, num_shards) for i in range(num_shards)],
            "shard_index": None,
            "created": max(m.created for m in manifests),
            "evaluation": None,
        }
    )


def merge_run(
    store: ObjectStore, num_shards: int | None = None
) -> tuple[PseudoLabels, RunEvaluation | None]:
    """Merge, with the evaluation files written first where there is ground truth."""
    results: dict[str, RunEvaluation | None] = {"value": None}

    def annotate(labels: PseudoLabels) -> dict[str, object] | None:
        evaluation = evaluate_labels(labels)
        results["value"] = evaluation
        return None if evaluation is None else store_evaluation(store, evaluation)

    labels = merge_shards(store, num_shards, evaluate=annotate)
    return labels, results["value"]


def describe(store: ObjectStore, labels: PseudoLabels, evaluation) -> str:
    m = labels.manifest
    lines = [
        f"{store.uri_for(MANIFEST)}: {m.images} images in {len(m.shards)} shard(s), "
        f"{len(m.skipped)} skipped; {m.clip_model} ({m.clip_pretrained}), {m.snippet_spec}, "
        f"{m.label_recipe()}"
    ]
    if m.provenance() is not None:
        lines.append(f"  {m.provenance()}")
    lines += [f"  skipped {s['image_id']} ({s['path']}): {s['reason']}" for s in m.skipped]
    never = [c for c, t in zip(m.classes, (m.thresholds or {}).get("final", []), strict=False)
             if t is None]  # fmt: skip
    if never:
        lines.append(f"  no positive evidence (every final score equal): {', '.join(never)} "
                     "got the threshold 'never' and are nobody's label")  # fmt: skip
    if evaluation is not None:
        lines += ["", table(evaluation)]
    return "\n".join(lines)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "run", help="the run URI the shards were written to (s3://... or file://...)"
    )
    parser.add_argument(
        "--num-shards", type=int, default=None, help="default: the count in the shard names"
    )


def run(args: argparse.Namespace) -> int:
    store = open_store(args.run)
    labels, evaluation = merge_run(store, args.num_shards)
    print(describe(store, labels, evaluation))
    return 0
