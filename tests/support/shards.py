"""Hand-written shards for the merge and reading tests: a manifest with every setting
filled in, vectors from a seeded generator (the paper's recipe), one call to write one."""

from __future__ import annotations

import torch

from cdul.core.method.aggregation import aggregate, pseudo_label
from cdul.core.pseudo_labels import LabelManifest, to_table, write_shard

CLASSES = ["cat", "dog", "bird"]


def manifest(index=0, count=2, **changes):
    base = dict(
        dataset="voc:/data:val", classes=list(CLASSES), template="a photo of a {}",
        clip_model="cdul-tiny-rn", clip_pretrained="/m.pt", snippet_spec="grid:3x3", zeta=0.5,
        num_shards=count, code_version="test", created=f"2024-01-0{index + 1}T00:00:00+00:00",
        shard_index=index,
    )  # fmt: skip
    base.update(changes)
    return LabelManifest(**base)


def vectors(n, seed):
    g = torch.Generator().manual_seed(seed)
    glob, alpha = torch.rand(n, 3, generator=g), torch.rand(n, 3, generator=g)
    beta = alpha * torch.rand(n, 3, generator=g)
    agg = aggregate(alpha, beta, 0.5)
    return {"global": glob, "alpha": alpha, "beta": beta, "aggregate": agg,
            "final": pseudo_label(glob, agg)}  # fmt: skip


def write(store, index, count, ids, seed, **changes):
    m = manifest(index, count, **changes)
    truth = (torch.rand(len(ids), 3, generator=torch.Generator().manual_seed(seed)) > 0.5).float()
    write_shard(store, m, to_table(ids, vectors(len(ids), seed), truth))
    return m
