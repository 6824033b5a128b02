"""One shard of a labeling run: stream images to the CLIP service, write pseudo labels.

Sharding: the images (dataset order, after ``limit``) are cut into ``num_shards``
contiguous ranges; shard k holds ``[n*k//S, n*(k+1)//S)``. Concatenating the shards in
order gives the unsharded run exactly.

Atomicity and resume: a shard is written in *parts* of ``part_size`` images
(``pseudo_labels/parts/shard-K-of-S/part-START-STOP.parquet``, dataset indices, stop
exclusive), each one atomic object holding that range's rows, the images skipped in it
and the run's shared settings. A rerun reads the finished parts, checks their settings
and ids, and sends only the rest; a kill therefore loses at most the parts in flight.
When every part is there, the shard table and then the shard manifest are written
(:func:`cdul.core.pseudo_labels.write_shard`; the manifest is the completion mark) and
the parts are deleted. A finished shard is skipped on rerun. Parts are the job's
scratch space: readers of the artefact only ever look at shards named by manifests.

``streams_per_endpoint`` ``ScoreStream`` calls per endpoint (default one) carry the
whole shard with ``max_in_flight`` requests outstanding on each, so the service's
batcher always has work. Answers are aggregated here by the run's label recipe
(:mod:`cdul.core.method.recipes`; the paper's Eq. 6-7 by default) from the service's
global scores and alpha/beta (Eq. 1-5), or from every snippet's cosines. The service
sends those whenever the recipe needs them or the run keeps them (the default;
``--no-store-cosines`` keeps none).
"""

from __future__ import annotations

import json
import logging
import queue
import re
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc
import pyarrow as pa
from tqdm import tqdm

from cdul.clip_service.client import SimilarityClient, SimilarityServiceError, label_set_ref
from cdul.core import embeddings
from cdul.core.embedding_codec import content_digest, model_identity
from cdul.core.errors import CdulError, ConfigError, DatasetError, StorageError
from cdul.core.method.snippets import parse_snippet_spec
from cdul.core.pseudo_labels import (
    PREFIX,
    LabelManifest,
    PseudoLabels,
    read_table,
    shard_done,
    shard_key,
    shard_name,
    write_shard,
    write_table,
)
from cdul.core.retry import RetryPolicy
from cdul.core.settings import differences
from cdul.core.storage import ObjectStore, open_store
from cdul.core.version import code_version
from cdul.labeler.answers import Answer, answers_table, from_embeddings, split
from cdul.labeler.config import LabelConfig
from cdul.labeler.reuse import Reuse
from cdul.labeler.service import check_service, read_ahead
from cdul.labeler.sources import ImageSource, open_source

log = logging.getLogger(__name__)
# Per-image answers worth sending again (the service's queue was full, it was restarting).
TRANSIENT = ("RESOURCE_EXHAUSTED", "UNAVAILABLE", "DEADLINE_EXCEEDED", "INTERNAL")
MAX_ITEM_RETRIES = 6
# The waits between rounds of resending them: 0.5 s doubling up to 8 s.
ITEM_RETRY = RetryPolicy(attempts=MAX_ITEM_RETRIES + 1, initial_backoff_s=0.5, max_backoff_s=8.0)
_PART = re.compile(r"part-(\d{7})-(\d{7})\.parquet$")


@dataclass
class ShardResult:
    shard: str
    images: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)
    resumed: int = 0
    reused: int = 0
    """Images answered from the run's stored embeddings (not encoded again)."""
    labeled_now: int = 0
    views: int = 0
    seconds: float = 0.0
    already_done: bool = False


@dataclass
class _Part:
    start: int
    stop: int
    rows: dict[int, Answer] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)
    table: pa.Table | None = None

    @property
    def key_name(self) -> str:
        return f"part-{self.start:07d}-{self.stop:07d}.parquet"

    @property
    def complete(self) -> bool:
        return len(self.rows) + len(self.skipped) == self.stop - self.start


def shard_range(count: int, index: int, num_shards: int) -> range:
    shard_name(index, num_shards)  # validates the index
    return range(count * index // num_shards, count * (index + 1) // num_shards)


class LabelJob:
    """What every labeling job derives from its config and the CLIP service: the output
    store, snippet spec and recipe, the service's model, and the manifest its shards
    share (this shard's and the tar-shard job's, :mod:`cdul.labeler.tar_job`)."""

    def __init__(
        self,
        config: LabelConfig,
        client: SimilarityClient,
        dataset: str,
        classes: tuple[str, ...],
        num_shards: int,
    ) -> None:
        self.config = config
        self.client = client
        self.store: ObjectStore = open_store(config.output, create_bucket=True)
        spec = parse_snippet_spec(config.snippet_spec)
        self.spec, self.snippet_spec = str(spec), spec
        self.recipe = config.recipe()
        self.cosines = config.store_cosines or self.recipe.needs_snippets
        templates = config.prompt_templates()
        info = check_service(client, config.wait_for_service_s)
        self.logit_scale = float(info.logit_scale)
        self.identity = model_identity(info) if config.store_embeddings else None
        self.embed_dim = int(info.embed_dim) if config.store_embeddings else None
        recipe = {k: v for k, v in self.recipe.to_json().items() if k != "zeta"}
        self.template = LabelManifest(
            dataset=dataset, classes=list(classes), template=config.template,
            clip_model=info.model_name, clip_pretrained=info.pretrained, snippet_spec=self.spec,
            zeta=self.recipe.zeta, num_shards=num_shards, code_version=code_version(),
            created="", shard_index=config.shard_index, limit=config.limit, templates=templates,
            recipe=recipe, logit_scale=self.logit_scale, embeddings=self.identity,
        )  # fmt: skip
        self.labels = label_set_ref(classes, config.template, templates or ())
        self.settings = self.template.settings()
        self.width = len(classes)

    def _check_settings(self, found: dict[str, object], where: str) -> None:
        changed = differences(found, self.settings)
        if changed:
            raise ConfigError(
                f"{where} already holds pseudo labels made with other settings "
                f"({'; '.join(changed)}); use another output run URI or delete that one"
            )

    def _answer(self, response, where: str, digest: str = "") -> Answer:
        """One service answer, checked against the label set and the run's settings."""
        scores = getattr(response, "global")
        answer = Answer(list(scores.probability), list(response.alpha), list(response.beta),
                        list(scores.cosine), list(response.snippet_cosine),
                        response.view_embeddings, digest)  # fmt: skip
        width = self.width
        cosines = len(answer.snippet_cosine) if self.cosines else width * response.snippet_count
        views = 1 + response.snippet_count
        stored = len(answer.view_embeddings) // 2 if self.embed_dim else 0
        if not len(answer.glob) == len(answer.alpha) == len(answer.beta) == width or (
            cosines != width * response.snippet_count or stored != views * (self.embed_dim or 0)
        ):
            raise SimilarityServiceError(
                grpc.StatusCode.INTERNAL,
                f"the answer for {where} has {len(answer.glob)}/"
                f"{len(answer.alpha)}/{len(answer.beta)} scores for {width} classes, "
                f"{cosines} snippet cosines and {stored} embedding values for "
                f"{response.snippet_count} snippets",
            )
        return answer

    def _write_shard(self, index: int, table: pa.Table, skipped: list[dict[str, str]]) -> None:
        """The embeddings (when kept), then the labels, then the manifest: the mark that
        both are complete."""
        table, stored = split(table)
        if self.identity is not None:
            if stored is None:
                raise CdulError(f"{shard_name(index, self.template.num_shards)}: rows without "
                                "embeddings in a run that stores them")  # fmt: skip
            key = embeddings.shard_key(index, self.template.num_shards)
            embeddings.write(self.store, key, stored, self.identity)
        manifest = LabelManifest.from_json(
            {**self.template.to_json(), "shard_index": index, "skipped": skipped,
             "created": datetime.now(UTC).isoformat(timespec="seconds")}
        )  # fmt: skip
        write_shard(self.store, manifest, table)


class ShardJob(LabelJob):
    """Label one shard of ``config`` into ``config.output``."""

    def __init__(self, config: LabelConfig, client: SimilarityClient, source: ImageSource) -> None:
        super().__init__(config, client, source.spec, source.classes, config.num_shards)
        self.source = source
        self.name = shard_name(config.shard_index, config.num_shards)
        self.parts_prefix = f"{PREFIX}/parts/{self.name}/"
        self.indices = shard_range(len(source), config.shard_index, config.num_shards)
        self.embeddings_key = embeddings.shard_key(config.shard_index, config.num_shards)
        self.reuse = Reuse(self.store, self.embeddings_key, self.identity, source, self.indices)

    # -- the run ---------------------------------------------------------------------

    def run(self) -> ShardResult:
        result = ShardResult(shard=self.name)
        self.reuse.load()  # before anything changes: a damaged embeddings object stops here
        done = shard_done(self.store, self.config.shard_index, self.config.num_shards)
        if done is not None:
            self._check_settings(done.settings(), self.store.uri_for(f"{PREFIX}/shards"))
            key = shard_key(self.config.shard_index, self.config.num_shards, "parquet")
            ids = read_table(self.store, key, columns=["image_id"]).column("image_id")
            change = self.reuse.changes(ids.to_pylist(), done.skipped)
            if change is None:
                log.info("%s is already complete in %s; nothing to do", self.name,
                         self.store.uri)  # fmt: skip
                self._delete_parts()  # left over if a run was killed just after the shard
                result.images, result.skipped = done.images, done.skipped
                result.already_done = True
                return result
            log.info("%s: the dataset changed since %s was labeled (%s); labeling it again",
                     self.name, self.store.uri, change)  # fmt: skip
            # No longer complete: a kill from here on resumes from the parts.
            self.store.delete(shard_key(self.config.shard_index, self.config.num_shards, "json"))
        parts = self._plan()
        result.resumed = sum(len(p.rows) + len(p.skipped) for p in parts if p.table is not None)
        pending = [p for p in parts if p.table is None]
        start = time.perf_counter()
        with tqdm(total=len(self.indices), initial=result.resumed, unit="img",
                  desc=f"labeling {self.name}", disable=not self.config.progress,
                  smoothing=0.1, mininterval=0.5 if sys.stderr.isatty() else 30.0,
                  ) as bar:  # fmt: skip
            result.reused = self._reuse(pending, bar)
            result.views = self._score(pending, bar)
        result.seconds = time.perf_counter() - start
        result.labeled_now = len(self.indices) - result.resumed - result.reused
        self._finish(parts, result)
        return result

    def _plan(self) -> list[_Part]:
        size, idx = self.config.part_size, self.indices
        parts = [_Part(s, min(s + size, idx.stop)) for s in range(idx.start, idx.stop, size)]
        existing = set(self.store.list(self.parts_prefix))
        for part in parts:
            key = self.parts_prefix + part.key_name
            if key in existing:
                self._load_part(part, key)
        resumed = sum(p.table is not None for p in parts)
        if resumed:
            log.info("%s: resuming; %d of %d parts already written", self.name, resumed,
                     len(parts))  # fmt: skip
        return parts

    def _load_part(self, part: _Part, key: str) -> None:
        try:
            table = read_table(self.store, key)
        except StorageError as error:  # objects are atomic, so this is damage: redo it
            log.warning("%s; labeling its images again", error)
            return
        meta = table.schema.metadata or {}
        settings = json.loads(meta.get(b"cdul.settings", b"{}"))
        self._check_settings(settings, self.store.uri_for(key))
        skipped = json.loads(meta.get(b"cdul.skipped", b"[]"))
        ids = table.column("image_id").to_pylist()
        gone = {s["image_id"] for s in skipped}
        expected = [self.source.ids[i] for i in range(part.start, part.stop)]
        if ids != [i for i in expected if i not in gone]:
            log.warning("%s holds other images than expected; labeling them again",
                        self.store.uri_for(key))  # fmt: skip
            return
        part.table, part.skipped = table, skipped
        empty = Answer([], [], [], [], [])
        part.rows = {i: empty for i in range(part.start, part.stop) if i not in gone}

    # -- reuse -----------------------------------------------------------------------

    def _reuse(self, parts: list[_Part], bar: tqdm) -> int:
        """Answer the images whose embeddings the run holds (same id and content) from
        them; write each part that they complete."""
        indices = [i for p in parts for i in range(p.start, p.stop)]
        found = self.reuse.reusable(indices)
        if not found:
            return 0
        text = self.client.text_embeddings(self.labels)
        where = self.store.uri_for(self.embeddings_key)
        order = sorted(found)
        answers = from_embeddings([found[i][1] for i in order], [found[i][0] for i in order],
                                  text, self.logit_scale, where)  # fmt: skip
        part_of = {i: p for p in parts for i in range(p.start, p.stop)}
        for i, answer in zip(order, answers, strict=True):
            part_of[i].rows[i] = answer
            self._progress(part_of[i], bar)
        log.info("%s: %d of %d images answered from stored embeddings", self.name, len(order),
                 len(indices))  # fmt: skip
        return len(order)

    # -- streaming -------------------------------------------------------------------

    def _score(self, parts: list[_Part], bar: tqdm) -> int:
        """Send every image of ``parts``; write each part as soon as it is complete."""
        part_of = {i: p for p in parts for i in range(p.start, p.stop)}
        index_of = {self.source.ids[i]: i for i in part_of}
        attempts: Counter[int] = Counter()
        to_send = sorted(i for i, p in part_of.items() if i not in p.rows)
        views, backoffs = 0, ITEM_RETRY.backoffs()
        while to_send:
            retry: list[int] = []
            errors: queue.SimpleQueue = queue.SimpleQueue()
            cancel = threading.Event()
            images = self._images(to_send, errors, cancel)
            stream = self.client.score_stream(images, self.labels, self.spec,
                                              self.config.max_in_flight, self.cosines,
                                              self.identity is not None)  # fmt: skip
            try:
                for response in stream:
                    self._drain(errors, part_of, bar)
                    i = index_of.get(response.id)
                    part = part_of.get(i) if i is not None else None
                    if part is None or i in part.rows:
                        continue  # not ours, or answered twice after a resend
                    if response.error and response.error_code in TRANSIENT:
                        if attempts[i] < MAX_ITEM_RETRIES:
                            attempts[i] += 1
                            retry.append(i)
                            continue
                        raise SimilarityServiceError(
                            grpc.StatusCode[response.error_code],
                            f"{self.source.location(i)}: still {response.error!r} after "
                            f"{MAX_ITEM_RETRIES} retries",
                        )
                    if response.error:
                        where = self.source.location(i)
                        self._bad(part, i, f"{where}: the CLIP service refused it: "
                                           f"{response.error}", bar)  # fmt: skip
                        continue
                    part.rows[i] = self._vectors(i, response)
                    views += self.snippet_spec.forwards(response.snippet_count)
                    self._progress(part, bar)
                self._drain(errors, part_of, bar)
            finally:
                cancel.set()
                stream.close()
            to_send = sorted(retry)
            if to_send:
                delay = next(backoffs, ITEM_RETRY.max_backoff_s)
                log.warning("%d image(s) answered %s; sending them again in %.1fs", len(to_send),
                            "/".join(TRANSIENT), delay)  # fmt: skip
                time.sleep(delay)
        return views

    def _images(self, indices: list[int], errors: queue.SimpleQueue, cancel: threading.Event):
        """(id, bytes) for the client's feeder thread; never raises (errors go to ``errors``)."""
        try:
            for i, future in read_ahead(self.source, indices):
                if cancel.is_set():
                    return
                try:
                    data = future.result()
                except DatasetError as error:
                    errors.put((i, str(error), False))
                    continue
                if self.identity is not None:
                    self.reuse.digests[i] = content_digest(data)
                yield self.source.ids[i], data
        except Exception as error:  # e.g. the image store is unreachable: fatal
            errors.put((None, f"reading images from {self.source.spec}: {error}", True))

    def _drain(self, errors: queue.SimpleQueue, part_of: dict[int, _Part], bar: tqdm) -> None:
        while not errors.empty():
            i, message, fatal = errors.get()
            if fatal:
                raise DatasetError(message)
            self._bad(part_of[i], i, message, bar)

    def _bad(self, part: _Part, i: int, reason: str, bar: tqdm) -> None:
        if not self.config.skip_bad:
            raise DatasetError(f"{reason} (--skip-bad skips such images and reports them)")
        log.warning("skipping %s", reason)
        part.skipped.append(
            {"image_id": self.source.ids[i], "path": self.source.location(i), "reason": reason}
        )
        self._progress(part, bar)

    def _vectors(self, i: int, response) -> Answer:
        return self._answer(response, self.source.location(i), self.reuse.digests.get(i, ""))

    def _progress(self, part: _Part, bar: tqdm) -> None:
        bar.update(1)
        if part.complete:
            self._write_part(part)

    # -- writing ---------------------------------------------------------------------

    def _part_table(self, part: _Part) -> pa.Table:
        order = sorted(part.rows)
        truth = self.source.ground_truth
        gt = None if truth is None else truth[order] if order else truth[:0]
        return answers_table(
            [self.source.ids[i] for i in order], [part.rows[i] for i in order],
            len(self.source.classes), self.recipe, self.logit_scale, gt,
            store_cosines=self.config.store_cosines, embed_dim=self.embed_dim,
        )  # fmt: skip

    def _write_part(self, part: _Part) -> None:
        table = self._part_table(part).replace_schema_metadata(
            {"cdul.settings": json.dumps(self.settings), "cdul.skipped": json.dumps(part.skipped)}
        )
        write_table(self.store, self.parts_prefix + part.key_name, table)
        part.table = table

    def _finish(self, parts: list[_Part], result: ShardResult) -> None:
        unfinished = [p.key_name for p in parts if p.table is None]
        if unfinished:  # every image was answered, refused or unreadable: cannot happen
            raise CdulError(f"{self.name}: parts {unfinished[:3]} are incomplete; rerun to resume")
        tables = [p.table.replace_schema_metadata(None) for p in parts if p.table is not None]
        table = pa.concat_tables(tables)
        skipped = list(self.source.skipped) if self.config.shard_index == 0 else []
        skipped += [s for p in parts for s in p.skipped]
        self._write_shard(self.config.shard_index, table, skipped)
        self._delete_parts()
        result.images, result.skipped = table.num_rows, skipped

    def _delete_parts(self) -> None:
        for key in self.store.list(self.parts_prefix):
            if _PART.search(key):
                self.store.delete(key)


def label(config: LabelConfig) -> tuple[Any, PseudoLabels | None, dict | None]:
    """Run one shard (a :class:`ShardResult`; for ``wds:`` tar shards one job's range of
    them, a :class:`~cdul.labeler.tar_job.TarResult`); an unsharded run is merged (and
    evaluated) at once."""
    from cdul.labels.merge import merge_run

    if config.dataset.startswith("wds:"):
        from cdul.labeler.tar_job import label_tars

        tars = label_tars(config)
        if config.num_shards > 1:
            return tars, None, None
        return tars, *merge_run(open_store(config.output))
    source = open_source(config.dataset, classes=config.classes, skip_bad=config.skip_bad,
                         limit=config.limit)  # fmt: skip
    with SimilarityClient(list(config.endpoints), deadline_s=config.deadline_s,
                          streams_per_endpoint=config.streams_per_endpoint) as client:  # fmt: skip
        job = ShardJob(config, client, source)
        result = job.run()
    if config.num_shards > 1:
        return result, None, None
    labels, evaluation = merge_run(job.store, num_shards=1)
    return result, labels, evaluation
