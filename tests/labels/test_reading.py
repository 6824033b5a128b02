"""Reading a run's scores as labels: relabel with another recipe from what a run
stores (alpha/beta or every snippet's cosines), and the one threshold rule."""

import pytest
import torch
from support.shards import manifest, write

from cdul.core.errors import ConfigError, StorageError
from cdul.core.method.recipes import LabelRecipe
from cdul.core.pseudo_labels import Cosines, read_pseudo_labels, to_table, write_shard
from cdul.labels.merge import merge_shards
from cdul.labels.reading import over_threshold, relabel


def test_relabel_from_alpha_beta_matches_eq_6_7_and_reading_needs_a_merge(store):
    write(store, 0, 1, ["a", "b", "c"], 4)
    with pytest.raises(StorageError, match="label-merge"):
        read_pseudo_labels(store)
    labels = merge_shards(store)
    same = relabel(labels, LabelRecipe(zeta=0.5))
    assert torch.equal(same["final"], labels["final"])
    zero = relabel(labels, LabelRecipe(zeta=0.0))
    assert torch.equal(zero["aggregate"], labels["alpha"])
    assert torch.equal(relabel(labels, LabelRecipe("max"))["aggregate"], labels["alpha"])
    one = relabel(labels, LabelRecipe(zeta=1.0))
    assert torch.equal(one["final"], (labels["global"] + labels["beta"]) / 2)
    with pytest.raises(ConfigError, match="stores none"):
        relabel(labels, LabelRecipe("mean"))


def test_cosines_round_trip_and_recipes_recompute_from_them(store):
    # Two images, two classes; image 0 has two snippets, image 1 one. logit scale 0 means
    # temperature 1: probabilities are softmax(cos).
    glob_cos = torch.tensor([[0.5, -0.5], [0.0, 0.0]])
    snip_cos = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.25, 0.25]])
    cosines = Cosines(glob_cos, snip_cos, torch.tensor([2, 1]))
    p = torch.softmax(snip_cos, dim=-1)
    glob = torch.softmax(glob_cos, dim=-1)
    alpha = torch.stack([p[:2].max(0).values, p[2]])
    beta = torch.stack([p[:2].min(0).values, p[2]])
    agg = torch.where(alpha >= 0.5, alpha, beta)
    vecs = {"global": glob, "alpha": alpha, "beta": beta, "aggregate": agg,
            "final": (glob + agg) / 2}  # fmt: skip
    m = manifest(count=1, classes=["cat", "dog"], logit_scale=0.0)
    write_shard(store, m, to_table(["x", "y"], vecs, None, cosines))
    labels = merge_shards(store)
    assert labels.cosines is None  # only read when asked for
    labels = read_pseudo_labels(store, cosines=True)
    assert torch.equal(labels.cosines.snippet_cosine, snip_cos)
    assert torch.equal(labels.cosines.counts, torch.tensor([2, 1]))
    # mean over image 0's two snippets: (p0 + p1) / 2 = (0.5, 0.5); image 1: p2 = (0.5, 0.5).
    mean = relabel(labels, LabelRecipe("mean", global_weight=0.0))
    assert torch.allclose(mean["final"], torch.full((2, 2), 0.5))
    # The paper's rule from the cosines equals the one from alpha and beta.
    g, snippets, valid = labels.cosines.padded(0.0)
    assert torch.allclose(LabelRecipe().aggregate(snippets, valid), agg)
    assert torch.allclose(g, glob) and valid.tolist() == [[True, True], [True, False]]


def test_over_threshold_is_one_rule_with_float32_equality():

    scores = torch.tensor([[0.3, 0.29999998, 0.5], [0.9, 0.0, 1.0]], dtype=torch.float32)
    # A stored 0.3 is a label at threshold 0.3 (compared as float32; as float64 the
    # stored 0.30000001192... would still pass, but 0.9 stored is 0.89999998 < 0.9).
    assert over_threshold(scores, 0.3).tolist() == [[True, False, True], [True, False, True]]
    assert over_threshold(scores, 0.9).tolist() == [[False, False, False], [True, False, True]]
    assert float(scores[1, 0]) < 0.9  # why the comparison is in float32
