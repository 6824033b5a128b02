"""The Similarity servicer: decode once, crop server-side, batch, answer Eq. 1-6.

Each request thread decodes its image once (the project's one decoder, with the pixel
limit) and hands it to the dynamic batcher, which cuts the snippets from the
full-resolution image and preprocesses every view (in the request thread on a GPU
server, in the batcher's worker just before the forward on a CPU-only one); the
equations come from :mod:`cdul.core.method` through
:class:`~cdul.core.clip_scoring.ClipScorer`. Every failure a client can cause is
INVALID_ARGUMENT (or NOT_FOUND / RESOURCE_EXHAUSTED) with a message naming it.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from dataclasses import dataclass

import grpc
import torch

from cdul._proto.cdul.similarity.v1 import similarity_pb2 as pb
from cdul._proto.cdul.similarity.v1 import similarity_pb2_grpc as pb_grpc
from cdul.clip_service.batcher import (
    BatcherClosedError,
    DynamicBatcher,
    QueueFullError,
    single_threaded_torch,
)
from cdul.clip_service.metrics import ServiceMetrics
from cdul.clip_service.streaming import PipelinedStream
from cdul.core import embedding_codec
from cdul.core.clip_scoring import ClipScorer
from cdul.core.errors import CdulError, ConfigError
from cdul.core.images import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image
from cdul.core.label_set import DEFAULT_TEMPLATE, LabelSet
from cdul.core.method.aggregation import aggregate
from cdul.core.method.snippets import DEFAULT_SNIPPET_SPEC, SnippetSpec, parse_snippet_spec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_snippets: int = 4096
    max_images_per_request: int = 256
    max_classes: int = 2048
    result_timeout_s: float = 120.0
    stream_in_flight: int = 64
    label_sets_cached: int = 256


@dataclass(frozen=True)
class _Prepared:
    """A snippet request whose views are queued for the encoder."""

    request: pb.SnippetRequest
    digest: str
    text: torch.Tensor
    count: int
    boxes: list[tuple[int, int, int, int]]
    embeddings: Future[torch.Tensor]


#: What the stream pool makes of one request: when it started, and its queued views or
#: (when it failed) its answer.
_Taken = tuple[float, _Prepared | pb.SnippetResponse]


class RequestRejected(CdulError):
    """The service refuses one request; ``code`` is the gRPC status the client gets
    (INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED or UNAVAILABLE)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def _invalid(message: str) -> RequestRejected:
    return RequestRejected(grpc.StatusCode.INVALID_ARGUMENT, message)


def _scores(cosine: torch.Tensor, probability: torch.Tensor) -> pb.Scores:
    return pb.Scores(cosine=cosine.tolist(), probability=probability.tolist())


class SimilarityServicer(pb_grpc.SimilarityServicer):
    def __init__(
        self,
        scorer: ClipScorer,
        batcher: DynamicBatcher,
        metrics: ServiceMetrics,
        limits: Limits,
        device: str,
        precision: str,
        preprocess_in_batcher: bool = False,
    ) -> None:
        self.scorer = scorer
        self.preprocess_in_batcher = preprocess_in_batcher
        self.batcher = batcher
        self.metrics = metrics
        self.limits = limits
        self._device, self._precision = device, precision
        self._label_sets: collections.OrderedDict[str, LabelSet] = collections.OrderedDict()
        self._label_lock = threading.Lock()
        self._stream_pool = ThreadPoolExecutor(
            max_workers=8, thread_name_prefix="clip-stream", initializer=single_threaded_torch
        )

    # -- helpers --------------------------------------------------------------------

    def _label_set(self, ref: pb.LabelSetRef) -> tuple[LabelSet, torch.Tensor]:
        kind = ref.WhichOneof("kind")
        if kind == "digest":
            with self._label_lock:
                labels = self._label_sets.get(ref.digest)
            if labels is None:
                raise RequestRejected(
                    grpc.StatusCode.NOT_FOUND,
                    f"unknown label set digest {ref.digest!r}: send the label set by value once",
                )
        elif kind == "value":
            if len(ref.value.classes) > self.limits.max_classes:
                raise _invalid(
                    f"{len(ref.value.classes)} classes, over the limit of {self.limits.max_classes}"
                )
            try:
                value = ref.value
                if value.templates and value.template:
                    raise _invalid("give labels.template or labels.templates, not both")
                labels = LabelSet(tuple(value.classes), value.template or DEFAULT_TEMPLATE,
                                  tuple(value.templates))  # fmt: skip
            except ConfigError as error:
                raise _invalid(str(error)) from None
            with self._label_lock:
                self._label_sets[labels.digest()] = labels
                self._label_sets.move_to_end(labels.digest())
                while len(self._label_sets) > self.limits.label_sets_cached:
                    self._label_sets.popitem(last=False)
        else:
            raise _invalid("no label set: set labels.value (classes + template) or labels.digest")
        text = self.scorer.cached_text_embeddings(labels)
        if text is None:  # a new label set: its prompts are encoded on the torch thread
            try:
                future = self.batcher.call(self.scorer.text_embeddings, labels)
            except BatcherClosedError as error:
                raise RequestRejected(grpc.StatusCode.UNAVAILABLE, str(error)) from None
            text = future.result(timeout=self.limits.result_timeout_s)
        return labels, text

    def _decode(self, image: pb.Image):
        name = image.id or "<unnamed image>"
        try:
            return decode_image(image.data, name=name, max_pixels=self.limits.max_pixels)
        except ImageDecodeError as error:
            raise _invalid(str(error)) from None

    def _submit(self, images: list, spec: SnippetSpec | None, views: int) -> Future[torch.Tensor]:
        """Queue the ``views`` views of ``images`` (with ``spec``'s snippets) for the
        encoder (a dense spec's own, which answers every cell of one view)."""

        def pixels() -> torch.Tensor:
            views = [self.scorer.view_pixels(image, spec) for image in images]
            return views[0] if len(views) == 1 else torch.cat(views)

        # A view that is not a crop (dense) answers every snippet: the scorer's encoder for
        # it; crops use the batcher's.
        encode = self.scorer.encoder(spec)
        try:
            if self.preprocess_in_batcher:
                return self.batcher.submit(pixels, views=views, encode=encode)
            return self.batcher.submit(pixels(), encode=encode)
        except QueueFullError as error:
            self.metrics.queue_full.inc()
            raise RequestRejected(grpc.StatusCode.RESOURCE_EXHAUSTED, str(error)) from None
        except BatcherClosedError as error:
            raise RequestRejected(grpc.StatusCode.UNAVAILABLE, str(error)) from None

    def _snippet_prepare(self, request: pb.SnippetRequest) -> _Prepared:
        """Validate, decode once, cut and preprocess, and queue the views for encoding."""
        labels, text = self._label_set(request.labels)
        try:
            spec = self.scorer.resolve(
                parse_snippet_spec(request.snippet_spec or DEFAULT_SNIPPET_SPEC)
            )
        except ConfigError as error:
            raise _invalid(str(error)) from None
        if request.HasField("zeta") and not 0.0 <= request.zeta <= 1.0:
            raise _invalid(f"zeta must lie in [0, 1], got {request.zeta}")
        image = self._decode(request.image)
        try:
            count = spec.count(*image.size)
        except ConfigError as error:
            raise _invalid(f"image {request.image.id!r}: {error}") from None
        if count > self.limits.max_snippets:
            raise _invalid(
                f"{spec} cuts {count} snippets from the {image.width}x{image.height} image "
                f"{request.image.id!r}, over the limit of {self.limits.max_snippets} per request"
            )
        embeddings = self._submit([image], spec, spec.forwards(count))
        self.metrics.images.inc()
        self.metrics.snippets.inc(count)
        boxes = spec.boxes(*image.size) if request.include_snippets else []
        return _Prepared(request, labels.digest(), text, count, boxes, embeddings)

    def _snippet_finish(self, prepared: _Prepared) -> pb.SnippetResponse:
        """Eq. 1-6 from the encoded views, and the answer."""
        request = prepared.request
        embeddings = prepared.embeddings.result(timeout=self.limits.result_timeout_s)
        embeddings = embeddings.reshape(-1, embeddings.shape[-1])  # a dense view's cells
        if request.include_embeddings:  # scored as stored, so stored ones score the same
            embeddings = embedding_codec.rounded(embeddings)
        scored = self.scorer.score_views(embeddings, prepared.text)
        response = pb.SnippetResponse(
            id=request.image.id,
            label_set_digest=prepared.digest,
            alpha=scored.alpha.tolist(),
            beta=scored.beta.tolist(),
            snippet_count=prepared.count,
            # "global" is a Python keyword, so this field goes by keyword dict.
            **{"global": _scores(scored.global_cosine, scored.global_scores)},
        )
        if request.HasField("zeta"):
            response.aggregate.extend(aggregate(scored.alpha, scored.beta, request.zeta).tolist())
        if request.include_embeddings:
            response.view_embeddings = embedding_codec.to_bytes(embeddings)
        if request.include_cosines:
            response.snippet_cosine.extend(scored.snippet_cosine.flatten().tolist())
        if request.include_snippets:
            for box, cos, prob in zip(
                prepared.boxes, scored.snippet_cosine, scored.snippet_scores, strict=True
            ):
                left, top, right, bottom = box
                response.snippets.add(
                    box=pb.Box(left=left, top=top, right=right, bottom=bottom),
                    scores=_scores(cos, prob),
                )
        return response

    def _snippet_answer(self, request: pb.SnippetRequest) -> pb.SnippetResponse:
        return self._snippet_finish(self._snippet_prepare(request))

    def _call(self, method: str, context: grpc.ServicerContext, answer):
        start = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            return answer()
        except RequestRejected as error:
            code = error.code
            context.abort(error.code, str(error))
        except Exception:
            code = grpc.StatusCode.INTERNAL
            log.exception("%s failed", method)
            context.abort(
                grpc.StatusCode.INTERNAL, f"{method} failed inside the server; see its log"
            )
        finally:
            self.metrics.requests.labels(method, code.name).inc()
            self.metrics.latency.labels(method).observe(time.perf_counter() - start)

    # -- RPCs -------------------------------------------------------------------------

    def GetModelInfo(
        self, request: pb.ModelInfoRequest, context: grpc.ServicerContext
    ) -> pb.ModelInfo:
        clip = self.scorer.clip
        info = pb.ModelInfo(
            model_name=clip.name,
            pretrained=clip.pretrained,
            embed_dim=clip.embed_dim,
            logit_scale=float(clip.logit_scale),
            temperature=float(clip.logit_scale.exp()),
            input_size=clip.image_size,
            device=self._device,
            precision=self._precision,
            max_snippets=self.limits.max_snippets,
            max_pixels=self.limits.max_pixels,
            preprocess=self.scorer.preprocessor,
            weights_digest=clip.weights_digest,
        )
        return self._call("GetModelInfo", context, lambda: info)

    def GlobalSimilarity(
        self, request: pb.GlobalRequest, context: grpc.ServicerContext
    ) -> pb.GlobalResponse:
        def answer() -> pb.GlobalResponse:
            labels, text = self._label_set(request.labels)
            if not request.images:
                raise _invalid("no images in the request")
            if len(request.images) > self.limits.max_images_per_request:
                raise _invalid(
                    f"{len(request.images)} images in one request, over the limit of "
                    f"{self.limits.max_images_per_request}"
                )
            images = [self._decode(image) for image in request.images]
            embeddings = self._submit(images, None, len(images)).result(
                timeout=self.limits.result_timeout_s
            )
            self.metrics.images.inc(len(images))
            cosine, scores = self.scorer.score_global(embeddings, text)
            return pb.GlobalResponse(
                label_set_digest=labels.digest(),
                results=[
                    pb.GlobalResult(id=image.id, scores=_scores(cos, prob))
                    for image, cos, prob in zip(request.images, cosine, scores, strict=True)
                ],
            )

        return self._call("GlobalSimilarity", context, answer)

    def SnippetSimilarity(
        self, request: pb.SnippetRequest, context: grpc.ServicerContext
    ) -> pb.SnippetResponse:
        return self._call("SnippetSimilarity", context, lambda: self._snippet_answer(request))

    def TextEmbeddings(
        self, request: pb.TextEmbeddingsRequest, context: grpc.ServicerContext
    ) -> pb.TextEmbeddingsResponse:
        def answer() -> pb.TextEmbeddingsResponse:
            labels, text = self._label_set(request.labels)
            return pb.TextEmbeddingsResponse(
                label_set_digest=labels.digest(),
                embed_dim=int(text.shape[1]),
                embedding=text.flatten().tolist(),
            )

        return self._call("TextEmbeddings", context, answer)

    def ScoreStream(
        self, request_iterator: Iterator[pb.SnippetRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.SnippetResponse]:
        # Pool threads only decode, cut and queue: they never wait for the encoder, so a
        # few of them keep the batcher fed; the call's thread waits for the encodings.
        stream = PipelinedStream(
            request_iterator,
            context,
            start=lambda request: self._stream_pool.submit(self._stream_prepare, request),
            answer=self._stream_answer,
            abandon=_cancel_encoding,
            capacity=self.limits.stream_in_flight,
            name="clip-stream-reader",
        )
        return stream.responses()

    def _stream_prepare(self, request: pb.SnippetRequest) -> _Taken:
        """On a pool thread: validate, decode, cut and queue the views (or fail the item)."""
        start = time.perf_counter()
        try:
            return start, self._snippet_prepare(request)
        except RequestRejected as error:
            return start, self._stream_failed(request, error.code, str(error))
        except Exception as error:
            log.exception("ScoreStream item %r failed", request.image.id)
            message = f"internal error: {error}"
            return start, self._stream_failed(request, grpc.StatusCode.INTERNAL, message)

    def _stream_answer(self, taken: _Taken) -> pb.SnippetResponse:
        """On the call's thread: wait for the encodings, answer Eq. 1-6."""
        start, prepared = taken
        if isinstance(prepared, pb.SnippetResponse):
            return prepared
        try:
            response = self._snippet_finish(prepared)
            self.metrics.requests.labels("ScoreStream", "OK").inc()
        except CancelledError:  # the call ended: its stream ends without an answer
            raise
        except Exception as error:
            log.exception("ScoreStream item %r failed", prepared.request.image.id)
            message = f"internal error: {error}"
            response = self._stream_failed(prepared.request, grpc.StatusCode.INTERNAL, message)
        self.metrics.latency.labels("ScoreStream").observe(time.perf_counter() - start)
        return response

    def _stream_failed(
        self, request: pb.SnippetRequest, code: grpc.StatusCode, message: str
    ) -> pb.SnippetResponse:
        """A failed item is an answer with ``error`` set; the stream goes on."""
        self.metrics.requests.labels("ScoreStream", code.name).inc()
        return pb.SnippetResponse(id=request.image.id, error=message, error_code=code.name)


def _cancel_encoding(taken: _Taken) -> None:
    """Drop the views of an abandoned stream item from the encoder's queue (unless it is
    encoding them already)."""
    if isinstance(prepared := taken[1], _Prepared):
        prepared.embeddings.cancel()
