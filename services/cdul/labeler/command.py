"""``cdul label DATASET --output RUN``: pseudo labels for a dataset via the CLIP service.

Sharded runs (a Kubernetes Indexed Job) pass ``--num-shards S``; the shard index
defaults to ``$JOB_COMPLETION_INDEX``. Each shard writes its own Parquet file and
manifest; ``cdul label-merge RUN`` then checks and merges them. An unsharded run merges
and evaluates itself. Rerunning the same command resumes: finished shards and parts
are kept, the rest is labeled.
"""

from __future__ import annotations

import argparse
import os

from cdul.core.datasets import SPEC_FORMS
from cdul.core.datasets.wds import FORM as WDS_FORM
from cdul.core.errors import ConfigError
from cdul.core.settings import add_flags, from_args
from cdul.labeler.config import LabelConfig


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None


def add_endpoint_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--endpoint",
        action="append",
        default=None,
        help="CLIP service host:port, or a gRPC target naming several servers "
        "(dns:///clip-service-headless:51000); repeat for several (default: "
        "$CDUL_CLIP_ENDPOINTS, comma-separated, else 127.0.0.1:51000)",
    )


def endpoints_from(args: argparse.Namespace) -> tuple[str, ...]:
    """``--endpoint`` flags, else ``$CDUL_CLIP_ENDPOINTS``, else the local default."""
    return tuple(
        args.endpoint
        or [
            e.strip()
            for e in os.environ.get("CDUL_CLIP_ENDPOINTS", "127.0.0.1:51000").split(",")
            if e.strip()
        ]
    )


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "dataset",
        help=" | ".join((*SPEC_FORMS, WDS_FORM)),
    )
    parser.add_argument(
        "-o", "--output", required=True, help="run URI: s3://BUCKET/RUN or file://DIR"
    )
    add_endpoint_flag(parser)
    parser.add_argument(
        "--classes",
        default=None,
        help="classes of unlabeled images: a file (one per line) or a comma-separated list",
    )
    parser.add_argument(
        "--shard-index", type=int, default=None, help="default: $JOB_COMPLETION_INDEX, else 0"
    )
    parser.add_argument(
        "--num-shards", type=int, default=None, help="default: $CDUL_NUM_SHARDS, else 1"
    )
    add_flags(parser, LabelConfig)


def run(args: argparse.Namespace) -> int:
    from cdul.core.label_set import parse_class_names
    from cdul.core.pseudo_labels import MANIFEST
    from cdul.labeler.job import ShardResult, label
    from cdul.labels.merge import describe

    config = from_args(
        LabelConfig,
        args,
        endpoints=endpoints_from(args),
        classes=parse_class_names(args.classes) if args.classes else None,
        shard_index=(
            args.shard_index
            if args.shard_index is not None
            else _env_int("JOB_COMPLETION_INDEX", 0)
        ),
        num_shards=args.num_shards
        if args.num_shards is not None
        else _env_int("CDUL_NUM_SHARDS", 1),
    )
    result, labels, evaluation = label(config)
    if not isinstance(result, ShardResult):  # wds: a range of tar shards
        print(result.summary())
    elif result.already_done:
        print(f"{result.shard}: already complete ({result.images} images); nothing labeled")
    else:
        rate = result.labeled_now / result.seconds if result.seconds > 0 else 0.0
        print(
            f"{result.shard}: {result.images} images labeled, {len(result.skipped)} skipped"
            f" ({result.resumed} from an earlier run, {result.reused} from stored embeddings);"
            f" {result.labeled_now} now in "
            f"{result.seconds:.1f}s = {rate:.1f} images/s, "
            f"{result.views / max(result.seconds, 1e-9):.0f} CLIP views/s"
        )
    if labels is not None:
        from cdul.core.storage import open_store

        print(describe(open_store(config.output), labels, evaluation))
    else:
        print(
            f"shard written; when all {config.num_shards} shards are done: "
            f"cdul label-merge {config.output}  (writes {MANIFEST})"
        )
    return 0
