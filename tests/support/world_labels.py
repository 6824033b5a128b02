"""Pseudo labels for the world's 300 training scenes, computed in-process, and ``cdul``
child processes for the trainer's tests (the fixtures are in tests/trainer/conftest.py).

The labeler (another job) is not needed: the tiny CLIP scores the scenes with
``grid:3x3`` and zeta 0.5 (``ClipScorer.score``, Eq. 1-7), once per session, and
:func:`write_labels` writes them in the labeler's layout (one Parquet shard + its
manifest + the merged manifest) into any run a test asks for.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
SNIPPETS = "grid:3x3"
ZETA = 0.5


@dataclass(frozen=True)
class WorldLabels:
    ids: list[str]
    classes: list[str]
    vectors: dict[str, torch.Tensor]
    ground_truth: torch.Tensor
    dataset: str


def compute_world_labels(world_root: Path, world_clip: Path) -> WorldLabels:
    from cdul.core.clip_models import create_clip
    from cdul.core.clip_scoring import ClipScorer
    from cdul.core.datasets import open_dataset
    from cdul.core.label_set import LabelSet
    from cdul.core.method.snippets import parse_snippet_spec
    from cdul.world.tiny_clip import MODEL_NAME

    dataset = open_dataset(f"voc:{world_root}:train")
    scorer = ClipScorer(create_clip(MODEL_NAME, str(world_clip)))
    images = [dataset.load(i).image for i in range(len(dataset))]
    scores = scorer.score(
        images, LabelSet(tuple(dataset.classes)), parse_snippet_spec(SNIPPETS), zeta=ZETA
    )
    vectors = {
        "global": scores.global_scores,
        "alpha": scores.alpha,
        "beta": scores.beta,
        "aggregate": scores.aggregate,
        "final": scores.final,
    }
    return WorldLabels(
        ids=dataset.ids(),
        classes=list(dataset.classes),
        vectors={k: v.float() for k, v in vectors.items()},
        ground_truth=dataset.ground_truth_matrix(),
        dataset=dataset.spec,
    )


def write_labels(labels: WorldLabels, run_uri: str) -> str:
    """Write ``labels`` as a merged one-shard pseudo-label run at ``run_uri``; return it."""
    from cdul import __version__
    from cdul.core import pseudo_labels as pl
    from cdul.core.storage import open_store

    store = open_store(run_uri, create_bucket=True)
    manifest = pl.LabelManifest(
        dataset=labels.dataset,
        classes=labels.classes,
        template="a photo of a {}",
        clip_model="cdul-tiny-rn",
        clip_pretrained="world",
        snippet_spec=SNIPPETS,
        zeta=ZETA,
        num_shards=1,
        code_version=__version__,
        created=datetime.datetime.now(datetime.UTC).isoformat(),
        shard_index=0,
    )
    table = pl.to_table(labels.ids, labels.vectors, labels.ground_truth)
    pl.write_shard(store, manifest, table)
    merged = pl.LabelManifest.from_json(manifest.to_json())
    merged.shard_index = None
    store.write_json(pl.MANIFEST, merged.to_json())
    return run_uri


def cdul_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "cdul.cli", *args]


def subprocess_env() -> dict[str, str]:
    """The environment for a ``cdul train`` child: same threads, no GPU, quiet bars."""
    env = dict(os.environ)
    env.update({"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "2", "PYTHONHASHSEED": "0"})
    return env


def run_cdul(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cdul_command(*args),
        env=subprocess_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
