"""What the embedded world's CLIP can do: zero-shot accuracy and pseudo-label mAP.

On held-out data: zero-shot top-1 on single objects (global scores, Eq. 1-2), and macro
mAP of the global, aggregate and final pseudo labels (Eq. 1-7) on multi-object scenes
read back through the VOC reader, for several snippet specs and zeta values, with the
CLIP forward passes per image and images/s of each spec. A zeta sweep reuses alpha
and beta, so it costs no CLIP call.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from cdul.core.clip_scoring import ClipScorer
from cdul.core.datasets import Dataset
from cdul.core.evaluation import evaluate
from cdul.core.label_set import LabelSet
from cdul.core.method.recipes import LabelRecipe
from cdul.core.method.snippets import parse_snippet_spec
from cdul.world.generator import PROMPT_TEMPLATE, make_single
from cdul.world.shapes import SHAPES

DEFAULT_SPECS = ("grid:2x2", "grid:3x3", "patch:16", "patch:32")
DEFAULT_ZETAS = (0.0, 0.25, 0.5, 0.75)


def zero_shot_top1(scorer: ClipScorer, seed: int, count: int = 500, batch_size: int = 256) -> float:
    """Top-1 accuracy of the global scores on ``count`` held-out single objects."""
    labels = LabelSet(SHAPES, PROMPT_TEMPLATE)
    text = scorer.text_embeddings(labels)
    singles = [make_single(seed, i, stream="heldout") for i in range(count)]
    embeddings = scorer.encode(scorer.preprocess([s.image for s in singles]), batch_size)
    predicted = (embeddings @ text.T).argmax(dim=1)  # argmax of cosine = argmax of Eq. 2
    truth = torch.tensor([s.label for s in singles])
    return float((predicted == truth).float().mean())


@dataclass
class SpecResult:
    spec: str
    passes_per_image: float
    images_per_s: float
    global_map: float
    aggregate_map: dict[float, float] = field(default_factory=dict)
    final_map: dict[float, float] = field(default_factory=dict)


def pseudo_label_maps(
    scorer: ClipScorer,
    dataset: Dataset,
    specs: Sequence[str] = DEFAULT_SPECS,
    zetas: Sequence[float] = DEFAULT_ZETAS,
    chunk: int = 64,
    progress: bool = True,
) -> list[SpecResult]:
    """mAP of global / aggregate / final pseudo labels per spec and zeta."""
    truth = dataset.ground_truth_matrix()
    if truth is None:
        raise ValueError(f"{dataset.spec} has no ground truth to evaluate against")
    labels = LabelSet(dataset.classes, PROMPT_TEMPLATE)
    images = [sample.image for sample in dataset]
    results = []
    for text in specs:
        spec = parse_snippet_spec(text)
        parts, passes = [], 0
        start = time.perf_counter()
        bar = tqdm(total=len(images), desc=f"scoring {spec}", unit="img", disable=not progress)
        for i in range(0, len(images), chunk):
            batch = images[i : i + chunk]
            scores = scorer.score(batch, labels, spec)
            parts.append(scores)
            passes += len(batch) + sum(len(s) for s in scores.snippet_cosine)
            bar.update(len(batch))
        bar.close()
        elapsed = time.perf_counter() - start
        glob = torch.cat([p.global_scores for p in parts])
        alpha = torch.cat([p.alpha for p in parts])
        beta = torch.cat([p.beta for p in parts])
        result = SpecResult(
            spec=str(spec),
            passes_per_image=passes / len(images),
            images_per_s=len(images) / elapsed,
            global_map=evaluate(glob, truth, dataset.classes).mean_ap,
        )
        for zeta in zetas:
            pseudo = LabelRecipe(zeta=zeta).apply(glob, alpha, beta)
            ap = {name: evaluate(v, truth, dataset.classes).mean_ap for name, v in pseudo.items()}
            result.aggregate_map[zeta], result.final_map[zeta] = ap["aggregate"], ap["final"]
        results.append(result)
    return results


def format_report(top1: float, singles: int, scenes: int, results: Sequence[SpecResult]) -> str:
    lines = [
        f"zero-shot top-1 on {singles} held-out singles: {top1:.3f}",
        f"pseudo-label macro mAP on {scenes} held-out scenes "
        "(global | aggregate / final for each zeta):",
    ]
    zetas = list(results[0].final_map) if results else []
    header = f"{'spec':<12}{'passes/img':>11}{'img/s':>9}{'global':>8}" + "".join(
        f"{f'agg z={z:g}':>11}{f'final z={z:g}':>13}" for z in zetas
    )
    lines += [header, "-" * len(header)]
    for r in results:
        cells = "".join(f"{r.aggregate_map[z]:>11.3f}{r.final_map[z]:>13.3f}" for z in zetas)
        lines.append(
            f"{r.spec:<12}{r.passes_per_image:>11.1f}{r.images_per_s:>9.1f}{r.global_map:>8.3f}{cells}"
        )
    return "\n".join(lines)
