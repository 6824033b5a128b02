"""``cdul relabel RUN -o NEW_RUN --classes FILE``: new classes or prompts, no image encoded.

A run labeled with ``--store-embeddings`` holds every image's view embeddings. A new
class list, a renamed class, another template or prompt ensemble, or another label
recipe then needs only the text tower: the CLIP service's ``TextEmbeddings`` gives the
new label set's class embeddings, and Eq. 1-7 are computed here from the stored
embeddings (:func:`cdul.labeler.answers.from_embeddings`), exactly as the service scores
them, so the new run's labels equal those of a full ``cdul label --store-embeddings``
with the same settings. The new run keeps the source's shards, images and skipped
images; its manifest names the run it came from (``relabeled_from``) and where the
embeddings are (``embeddings_run``: they are not copied), so a relabel can be relabeled
again. The service must serve the model the embeddings came from.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import replace
from datetime import UTC, datetime

import torch
from tqdm import tqdm

from cdul.clip_service.client import SimilarityClient, label_set_ref
from cdul.core import embeddings
from cdul.core.embedding_codec import check_same_model, model_identity
from cdul.core.errors import ConfigError, StorageError
from cdul.core.pseudo_labels import (
    MANIFEST,
    PREFIX,
    LabelManifest,
    PseudoLabels,
    read_table,
    shard_key,
    write_shard,
)
from cdul.core.settings import add_flags, from_args
from cdul.core.storage import ObjectStore, open_store
from cdul.core.version import code_version
from cdul.labeler.answers import answers_table, from_embeddings
from cdul.labeler.config import LabelConfig
from cdul.labeler.service import check_service

log = logging.getLogger(__name__)
#: Label settings a relabel cannot change: they are the stored images' (or the job's).
FIXED = ("snippet_spec", "part_size", "max_in_flight", "streams_per_endpoint", "skip_bad",
         "limit", "store_embeddings")  # fmt: skip


def source_run(store: ObjectStore) -> LabelManifest:
    """The merged manifest of a run that stores embeddings; ConfigError otherwise."""
    if not store.exists(MANIFEST):
        raise StorageError(
            f"no merged pseudo labels at {store.uri_for(MANIFEST)}: relabel a finished run"
        )
    manifest = LabelManifest.from_json(store.read_json(MANIFEST))
    if manifest.embeddings is None:
        raise ConfigError(
            f"{store.uri} stores no image embeddings (it was labeled without "
            "--store-embeddings), so a relabel would have to encode every image again: run "
            "'cdul label' with the new classes, and --store-embeddings for the next time"
        )
    return manifest


def relabel(config: LabelConfig, run: str) -> tuple[PseudoLabels, object]:
    """Label ``run``'s images for ``config``'s label set and recipe into
    ``config.output`` from the stored embeddings; merged and evaluated like a label run."""
    from cdul.labels.merge import merge_run

    source = open_store(run)
    manifest = source_run(source)
    output = open_store(config.output, create_bucket=True)
    if output.uri.rstrip("/") == source.uri.rstrip("/"):
        raise ConfigError("relabel into a new run URI: the source run keeps its labels")
    if output.list(f"{PREFIX}/"):
        raise ConfigError(
            f"{output.uri} already holds pseudo labels; relabel into a new run URI (or delete it)"
        )
    held_by = manifest.embeddings_run or source.uri
    vectors = open_store(held_by)
    classes = list(config.classes or manifest.classes)
    templates = config.prompt_templates()
    with SimilarityClient(list(config.endpoints), deadline_s=config.deadline_s) as client:
        info = check_service(client, config.wait_for_service_s)
        check_same_model(manifest.embeddings, model_identity(info), source.uri,
                         f"the CLIP service at {', '.join(config.endpoints)}")  # fmt: skip
        text = client.text_embeddings(label_set_ref(classes, config.template, templates or ()))
    recipe = config.recipe()
    logit_scale = float(info.logit_scale)
    template = replace(
        manifest, classes=classes, template=config.template, templates=templates,
        zeta=recipe.zeta, recipe={k: v for k, v in recipe.to_json().items() if k != "zeta"},
        code_version=code_version(), embeddings_run=held_by, relabeled_from=source.uri,
        logit_scale=logit_scale, evaluation=None, review=None, class_bias=None,
        thresholds=None, threshold_rule=None,
    )  # fmt: skip
    count = manifest.num_shards
    for index in tqdm(range(count), desc="relabeling", unit="shard", disable=not config.progress):
        # The merged manifest vouches for its shards: read, not probed (10^4 tar shards).
        done = LabelManifest.from_json(source.read_json(shard_key(index, count, "json")))
        table = read_table(source, shard_key(index, count, "parquet"),
                           columns=["image_id", "ground_truth"])  # fmt: skip
        key = embeddings.shard_key(index, count)
        stored = embeddings.read(vectors, key, manifest.embeddings)
        ids = table.column("image_id").to_pylist()
        if stored.ids != ids:
            raise StorageError(
                f"{vectors.uri_for(key)} holds other images than "
                f"{source.uri_for(shard_key(index, count, 'parquet'))}; was one of them "
                "labeled again since?"
            )  # fmt: skip
        answers = from_embeddings(stored.blobs, stored.digests, text, logit_scale,
                                  vectors.uri_for(key))  # fmt: skip
        truth = _ground_truth(table, manifest.classes, classes)
        rows = answers_table(ids, answers, len(classes), recipe, logit_scale, truth,
                             store_cosines=config.store_cosines, embed_dim=None)  # fmt: skip
        shard = replace(template, shard_index=index, skipped=done.skipped,
                        created=datetime.now(UTC).isoformat(timespec="seconds"))  # fmt: skip
        write_shard(output, shard, rows)
    return merge_run(output, num_shards=count)


def _ground_truth(table, old: list[str], new: list[str]) -> torch.Tensor | None:
    """The source's ground truth for the new classes when it has every one of them."""
    if "ground_truth" not in table.column_names or not set(new) <= set(old):
        return None
    values = table.column("ground_truth").combine_chunks().flatten().to_numpy()
    full = torch.from_numpy(values.copy()).reshape(-1, len(old))
    return full[:, [old.index(c) for c in new]]


def configure(parser: argparse.ArgumentParser) -> None:
    from cdul.labeler.command import add_endpoint_flag

    parser.add_argument("run", help="a run labeled with --store-embeddings (or a relabel of one)")
    parser.add_argument("-o", "--output", required=True, help="the new run's URI")
    add_endpoint_flag(parser)
    parser.add_argument(
        "--classes", default=None,
        help="the new class list: a file (one per line) or a comma-separated list "
        "(default: the run's)",
    )  # fmt: skip
    add_flags(parser, LabelConfig, exclude=FIXED)


def run(args: argparse.Namespace) -> int:
    from cdul.core.label_set import parse_class_names
    from cdul.labeler.command import endpoints_from
    from cdul.labels.merge import describe

    source = open_store(args.run)
    manifest = source_run(source)
    config = from_args(
        LabelConfig, args, dataset=manifest.dataset, endpoints=endpoints_from(args),
        classes=parse_class_names(args.classes) if args.classes else None,
        snippet_spec=manifest.snippet_spec,
    )  # fmt: skip
    labels, evaluation = relabel(config, args.run)
    print(f"relabeled {len(labels)} images of {source.uri} from their stored embeddings "
          "(no image encoded)")  # fmt: skip
    print(describe(open_store(config.output), labels, evaluation))
    return 0
