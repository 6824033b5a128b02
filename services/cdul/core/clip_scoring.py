"""Scoring images against a label set with a loaded CLIP: Eq. 1-7 end to end, in-process.

This is the one place that turns pixels into the method's inputs: CLIP preprocessing,
the image and text encoders, snippet cropping from the full-resolution image. The
equations themselves come from :mod:`cdul.core.method`. The gRPC similarity service
wraps the same calls with batching across requests; the world's report and the tests'
independent reference use them directly.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import open_clip
import torch
from open_clip import get_model_preprocess_cfg
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image

from cdul.core.clip_dense import check_dense, dense_embeddings
from cdul.core.clip_models import Clip
from cdul.core.clip_preprocess import PREPROCESSORS, TensorPreprocess, pil_views
from cdul.core.errors import ConfigError
from cdul.core.label_set import LabelSet
from cdul.core.method.aggregation import DEFAULT_ZETA
from cdul.core.method.recipes import LabelRecipe
from cdul.core.method.similarity import ViewScores, class_scores, cosine_similarity, view_scores
from cdul.core.method.snippets import SnippetSpec

# The named prompt ensembles of :data:`cdul.core.label_set.TEMPLATE_SETS`: open_clip's.
TEMPLATE_SOURCES = {
    "openai": open_clip.OPENAI_IMAGENET_TEMPLATES,
    "simple": open_clip.SIMPLE_IMAGENET_TEMPLATES,
}


def prompt_templates(templates: Sequence[str]) -> list[str]:
    """Format strings of a prompt ensemble, named sets expanded (open_clip's are
    functions of the class name; called with ``"{}"`` they give the format string)."""
    out: list[str] = []
    for template in templates:
        source = TEMPLATE_SOURCES.get(template)
        out += [make("{}") for make in source] if source is not None else [template]
    return out


@dataclass(frozen=True)
class ImageScores:
    """Everything Eq. 1-7 produce for a batch of N images over C classes."""

    global_cosine: torch.Tensor  # (N, C)
    global_scores: torch.Tensor  # (N, C) Eq. 2
    snippet_cosine: list[torch.Tensor]  # N tensors (S_i, C)
    alpha: torch.Tensor  # (N, C) Eq. 5
    beta: torch.Tensor
    aggregate: torch.Tensor  # (N, C) Eq. 6
    final: torch.Tensor  # (N, C) Eq. 7


class ClipScorer:
    """A CLIP model plus a cache of label-set text embeddings."""

    def __init__(
        self, clip: Clip, device: str | torch.device = "cpu", preprocessor: str = "pil"
    ) -> None:
        if preprocessor not in PREPROCESSORS:
            raise ConfigError(f"preprocessor must be one of {PREPROCESSORS}, got {preprocessor!r}")
        self.clip = clip
        self.device = torch.device(device)
        self.preprocessor = preprocessor
        self._tensor_preprocess = (
            TensorPreprocess(get_model_preprocess_cfg(clip.model), self.device, self._dtype())
            if preprocessor == "tensor"
            else None
        )
        self._text_cache: dict[str, torch.Tensor] = {}
        self._text_lock = threading.Lock()
        self._dense_preprocess: dict[int, Callable[[Image.Image], torch.Tensor]] = {}

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale.float().cpu()

    def cached_text_embeddings(self, labels: LabelSet) -> torch.Tensor | None:
        """The label set's prompt embeddings if already computed, else None."""
        with self._text_lock:
            return self._text_cache.get(labels.digest())

    @torch.inference_mode()
    def text_embeddings(self, labels: LabelSet) -> torch.Tensor:
        """``(C, D)`` prompt embeddings, computed once per label set. A prompt ensemble is
        open_clip's zero-shot classifier: per class, the mean of the normalised embeddings
        of its prompts, normalised again."""
        key = labels.digest()
        with self._text_lock:  # concurrent requests for a new label set encode it once
            if key not in self._text_cache:
                if labels.templates:
                    weights = open_clip.build_zero_shot_classifier(
                        self.clip.model, self.clip.tokenizer, labels.classes,
                        prompt_templates(labels.templates), device=self.device,
                    )  # fmt: skip
                    self._text_cache[key] = weights.T.float().cpu()
                else:
                    tokens = self.clip.tokenizer(labels.prompts()).to(self.device)
                    self._text_cache[key] = self.clip.model.encode_text(tokens).float().cpu()
            return self._text_cache[key]

    def _dtype(self) -> torch.dtype:
        # The image tower's weight dtype: open_clip's fp16/bf16 precisions convert conv and
        # linear weights only (logit_scale and embeddings stay fp32), so the model's first
        # parameter does not tell what the encoder's input must be.
        weights = (p for p in self.clip.model.visual.parameters() if p.ndim >= 2)
        return next(weights).dtype

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """open_clip's transform on each image (whole images; see :meth:`view_pixels`)."""
        return torch.stack([self.clip.preprocess(image) for image in images])

    def resolve(self, spec: SnippetSpec) -> SnippetSpec:
        """``spec`` for this model (``dense``'s size filled in); snippets that are not
        crops come from the dense encoder, which this model must have."""
        if not spec.cut_from_image:
            check_dense(self.clip.model.visual, self.clip.name)
        return spec.at(self.clip.image_size)

    def encoder(self, spec: SnippetSpec | None) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The encoder of ``spec``'s views when it is not :meth:`encode` (dense: one
        forward answers every snippet), else None."""
        return None if spec is None or spec.cut_from_image else self.encode_dense

    def view_pixels(self, image: Image.Image, spec: SnippetSpec | None) -> torch.Tensor:
        """CLIP input for the whole image and, with a spec, each of its snippets (one
        view in all for snippets that are not crops: the whole image at its size)."""
        if spec is not None and not spec.cut_from_image:
            return self._dense_view(image, self.resolve(spec).view_size or self.clip.image_size)
        boxes = spec.boxes(*image.size) if spec is not None else []
        if self._tensor_preprocess is not None:
            return self._tensor_preprocess(image, boxes)
        return pil_views(self.clip.preprocess, image, boxes)

    def _dense_view(self, image: Image.Image, size: int) -> torch.Tensor:
        """The whole image preprocessed as for the global score, at ``size`` pixels."""
        if size == self.clip.image_size:
            return self.view_pixels(image, None)
        if size not in self._dense_preprocess:  # the model's transform, another size
            cfg = {**get_model_preprocess_cfg(self.clip.model), "size": size}
            self._dense_preprocess[size] = (
                TensorPreprocess(cfg, self.device, self._dtype())
                if self.preprocessor == "tensor"
                else image_transform_v2(PreprocessCfg(**cfg), is_train=False)
            )
        preprocess = self._dense_preprocess[size]
        if isinstance(preprocess, TensorPreprocess):
            return preprocess(image, [])
        return pil_views(preprocess, image, [])

    @torch.inference_mode()
    def encode_dense(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(N, 1 + cells, D)``: per image its global and per-cell embeddings, one
        forward (:func:`cdul.core.clip_dense.dense_embeddings`)."""
        visual = check_dense(self.clip.model.visual, self.clip.name)
        return dense_embeddings(visual, pixels.to(self.device, self._dtype())).float().cpu()

    @torch.inference_mode()
    def encode(self, pixels: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Image embeddings ``(N, D)`` of preprocessed ``(N, 3, H, W)`` pixels."""
        dtype = self._dtype()
        out = [
            self.clip.model.encode_image(chunk.to(self.device, dtype)).float().cpu()
            for chunk in pixels.split(batch_size)
        ]
        return torch.cat(out) if out else torch.empty(0, self.clip.embed_dim)

    def score_global(
        self, embeddings: torch.Tensor, text: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 1-2 (or 3-4): cosines and class scores of ``(N, D)`` image embeddings."""
        cosine = cosine_similarity(embeddings, text)
        return cosine, class_scores(cosine, self.logit_scale)

    def score_views(self, embeddings: torch.Tensor, text: torch.Tensor) -> ViewScores:
        """Eq. 1-5 from ``(1 + S, D)`` view embeddings and ``(C, D)`` prompt embeddings."""
        return view_scores(embeddings, text, self.logit_scale)

    def score(
        self,
        images: Sequence[Image.Image],
        labels: LabelSet,
        spec: SnippetSpec,
        zeta: float = DEFAULT_ZETA,
        batch_size: int = 256,
    ) -> ImageScores:
        """Eq. 1-7 for ``images``: global and snippet passes, aggregation, final label."""
        text = self.text_embeddings(labels)
        pixels = [self.view_pixels(image, spec) for image in images]
        encode = self.encoder(spec)
        if encode is not None:  # one view per image answers every snippet
            embeddings = torch.cat([encode(chunk) for chunk in torch.cat(pixels).split(batch_size)])
            chunks = list(embeddings.unbind())
        else:
            embeddings = self.encode(torch.cat(pixels), batch_size)
            chunks = list(embeddings.split([len(p) for p in pixels]))
        per_image = [self.score_views(chunk, text) for chunk in chunks]
        glob = torch.stack([r.global_scores for r in per_image])
        alpha = torch.stack([r.alpha for r in per_image])
        beta = torch.stack([r.beta for r in per_image])
        pseudo = LabelRecipe(zeta=zeta).apply(glob, alpha, beta)  # the paper's Eq. 6-7
        return ImageScores(
            global_cosine=torch.stack([r.global_cosine for r in per_image]),
            global_scores=glob,
            snippet_cosine=[r.snippet_cosine for r in per_image],
            alpha=alpha,
            beta=beta,
            aggregate=pseudo["aggregate"],
            final=pseudo["final"],
        )
