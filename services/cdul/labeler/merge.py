"""``cdul label-merge RUN``: check every shard of a run, evaluate, write the manifest.

A sharded run (``--num-shards S``, e.g. a Kubernetes Indexed Job) writes S shard
manifests; this step refuses a missing, unfinished or inconsistent shard, then writes
``evaluation.json/csv`` (when there is ground truth) and the merged
``pseudo_labels/manifest.json`` last. An unsharded ``cdul label`` run merges itself.
"""

from __future__ import annotations

import argparse

from cdul.core.evaluation import Evaluation
from cdul.core.pseudo_labels import MANIFEST, PseudoLabels, merge_shards
from cdul.core.storage import ObjectStore, open_store
from cdul.labeler.report import evaluate_labels, store_evaluation, table


def merge_run(
    store: ObjectStore, num_shards: int | None = None
) -> tuple[PseudoLabels, dict[str, Evaluation] | None]:
    results: dict[str, dict[str, Evaluation] | None] = {"value": None}

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
    lines += [f"  skipped {s['image_id']} ({s['path']}): {s['reason']}" for s in m.skipped]
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
