"""Labeling WebDataset tar shards (``wds:``): the input shard is the unit of work.

Job index ``j`` of ``--num-shards J`` (a Kubernetes Indexed Job's completion index)
takes the contiguous range ``[T*j//J, T*(j+1)//J)`` of the ``T`` input shards and writes
one output per input shard, ``pseudo_labels/shards/shard-K-of-T`` (K the input shard's
position in the spec), as ``cdul label-merge`` reads any run. An output whose manifest
exists is skipped, so a killed job resumes at the input shard it was on (redoing at most
that one). Each input shard is streamed once, front to back: samples go to the CLIP
service as they are read, and the bytes of a sample are kept only until it is answered
(a transient refusal sends them again).
"""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

import grpc
import torch
from tqdm import tqdm

from cdul.clip_service.client import SimilarityClient, SimilarityServiceError
from cdul.core.datasets.wds import TarShards, WdsSample
from cdul.core.embedding_codec import content_digest
from cdul.core.errors import ConfigError, DatasetError
from cdul.core.pseudo_labels import PREFIX, shard_done, shard_name
from cdul.labeler.answers import Answer, answers_table
from cdul.labeler.config import LabelConfig
from cdul.labeler.job import ITEM_RETRY, MAX_ITEM_RETRIES, TRANSIENT, LabelJob, shard_range

log = logging.getLogger(__name__)


@dataclass
class TarResult:
    """What one job did: its input shards, those done before, the images labeled."""

    shards: list[str]
    already_done: list[str] = field(default_factory=list)
    images: int = 0
    labeled_now: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)
    views: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        rate = self.labeled_now / self.seconds if self.seconds > 0 else 0.0
        return (f"{len(self.shards)} tar shard(s) ({self.shards[0]}..{self.shards[-1]}): "
                f"{self.images} images, {len(self.skipped)} skipped; "
                f"{len(self.already_done)} shard(s) done before, {self.labeled_now} images "
                f"labeled now in {self.seconds:.1f}s = {rate:.1f} images/s")  # fmt: skip


class TarShardJob(LabelJob):
    """Label job ``config.shard_index``'s range of ``shards`` into ``config.output``."""

    def __init__(self, config: LabelConfig, client: SimilarityClient, shards: TarShards) -> None:
        if config.limit is not None:
            raise ConfigError("--limit does not apply to wds: datasets; name fewer shards "
                              "in the brace range instead")  # fmt: skip
        if not shards.classes:
            raise ConfigError(f"{shards.spec} names no classes: give --classes FILE")
        super().__init__(config, client, shards.spec, shards.classes, len(shards))
        self.shards = shards
        self.mine = shard_range(len(shards), config.shard_index, config.num_shards)

    def run(self) -> TarResult:
        count = len(self.shards)
        result = TarResult([shard_name(k, count) for k in self.mine])
        start = time.perf_counter()
        with tqdm(total=len(self.mine), unit="shard", desc=f"labeling {len(self.mine)} tar shards",
                  disable=not self.config.progress,
                  mininterval=0.5 if sys.stderr.isatty() else 30.0) as bar:  # fmt: skip
            for k in self.mine:
                done = shard_done(self.store, k, count)
                if done is not None:
                    self._check_settings(done.settings(), self.store.uri_for(f"{PREFIX}/shards"))
                    result.already_done.append(shard_name(k, count))
                    result.images += done.images
                    result.skipped += done.skipped
                else:
                    images, skipped, views = self._label_shard(k)
                    result.images += images
                    result.labeled_now += images
                    result.skipped += skipped
                    result.views += views
                bar.update(1)
        result.seconds = time.perf_counter() - start
        return result

    # -- one input shard -------------------------------------------------------------

    def _label_shard(self, k: int) -> tuple[int, list[dict[str, str]], int]:
        url = self.shards.urls[k]
        order: list[str] = []
        labels: dict[str, list[str] | None] = {}
        pending: dict[str, bytes] = {}
        skipped: list[dict[str, str]] = []
        broken: list[str] = []
        refused: list[DatasetError] = []

        def keep(sample: WdsSample) -> bool:
            if sample.data is None:
                self._bad(skipped, sample.key, url, sample.problem or "no image")
                return False
            if sample.key in labels:
                self._bad(skipped, sample.key, url, f"{url}#{sample.key}: the key repeats")
                return False
            order.append(sample.key)
            labels[sample.key] = sample.labels
            pending[sample.key] = sample.data
            return True

        def first_pass():
            """The shard's samples to send; runs on the client's feeder thread, so it
            never raises: a break ends it (``broken``), a refused sample in strict mode
            too (``refused``, raised once the stream is drained)."""
            samples = self.shards.samples(k)
            while True:
                try:
                    sample = next(samples)
                except StopIteration:
                    return
                except DatasetError as error:  # truncated or corrupt: the rest is unknown
                    broken.append(str(error))
                    return
                try:
                    kept = keep(sample)
                except DatasetError as error:
                    refused.append(error)
                    return
                if kept:
                    yield sample.key, sample.data

        answers: dict[str, Answer] = {}
        attempts: Counter[str] = Counter()
        backoffs, views = ITEM_RETRY.backoffs(), 0
        to_send = first_pass()
        while True:
            retry: list[str] = []
            for response in self.client.score_stream(
                to_send, self.labels, self.spec, self.config.max_in_flight, self.cosines,
                self.identity is not None,
            ):  # fmt: skip
                key = response.id
                if key not in pending:
                    continue
                if response.error and response.error_code in TRANSIENT:
                    if attempts[key] >= MAX_ITEM_RETRIES:
                        raise SimilarityServiceError(
                            grpc.StatusCode[response.error_code],
                            f"{url}#{key}: still {response.error!r} after {MAX_ITEM_RETRIES} "
                            "retries",
                        )
                    attempts[key] += 1
                    retry.append(key)
                    continue
                data = pending.pop(key)
                if response.error:
                    self._bad(skipped, key, url, f"{url}#{key}: the CLIP service refused it: "
                                                 f"{response.error}")  # fmt: skip
                    continue
                digest = content_digest(data) if self.identity is not None else ""
                answers[key] = self._answer(response, f"{url}#{key}", digest)
                views += self.snippet_spec.forwards(response.snippet_count)
            if refused:
                raise refused[0]
            if broken:
                self._broken(skipped, url, broken[0])
                broken.clear()
            if not retry:
                break
            time.sleep(next(backoffs, ITEM_RETRY.max_backoff_s))
            to_send = iter([(key, pending[key]) for key in retry])
        ids = [key for key in order if key in answers]
        table = answers_table(
            ids, [answers[key] for key in ids], self.width, self.recipe, self.logit_scale,
            self._truth(ids, labels), store_cosines=self.config.store_cosines,
            embed_dim=self.embed_dim,
        )  # fmt: skip
        self._write_shard(k, table, skipped)
        return len(ids), skipped, views

    def _truth(self, ids: list[str], labels: dict[str, list[str] | None]) -> torch.Tensor | None:
        """Multi-hot ground truth when every labeled sample of the shard has a label file."""
        if not ids or any(labels[key] is None for key in ids):
            return None
        truth = torch.zeros(len(ids), self.width)
        index = {name: c for c, name in enumerate(self.shards.classes)}
        for row, key in enumerate(ids):
            for name in labels[key] or []:
                truth[row, index[name]] = 1.0
        return truth

    def _bad(self, skipped: list[dict[str, str]], key: str, url: str, reason: str) -> None:
        if not self.config.skip_bad:
            raise DatasetError(f"{reason} (--skip-bad skips such samples and reports them)")
        log.warning("skipping %s", reason)
        skipped.append({"image_id": key, "path": f"{url}#{key}", "reason": reason})

    def _broken(self, skipped: list[dict[str, str]], url: str, reason: str) -> None:
        if not self.config.skip_bad:
            raise DatasetError(f"{reason} (--skip-bad labels the samples before the break and "
                               "reports the shard)")  # fmt: skip
        log.warning("%s; its samples after the break are not labeled", reason)
        skipped.append({"image_id": f"{url}#rest", "path": url, "reason": reason})


def label_tars(config: LabelConfig) -> TarResult:
    shards = TarShards(config.dataset, classes=config.classes or (), skip_bad=config.skip_bad)
    with SimilarityClient(list(config.endpoints), deadline_s=config.deadline_s,
                          streams_per_endpoint=config.streams_per_endpoint) as client:  # fmt: skip
        return TarShardJob(config, client, shards).run()
