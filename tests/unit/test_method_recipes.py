"""Every label recipe against numbers worked out by hand (binary fractions, so exact)."""

import pytest
import torch

from cdul.core.errors import ConfigError
from cdul.core.method.aggregation import initial_pseudo_labels
from cdul.core.method.recipes import (
    AGGREGATION_FORMS,
    AGGREGATIONS,
    LabelRecipe,
    aggregation,
    class_bias,
    debias,
    mix,
)

# One image, three snippets, two classes (the same numbers as Eq. 5-7's tests).
SNIPPETS = torch.tensor([[[0.75, 0.25], [0.125, 0.875], [0.5, 0.5]]])
GLOBAL = torch.tensor([[0.625, 0.375]])


def test_paper_recipe_is_eq_5_to_7_exactly():
    for zeta in (0.0, 0.5, 0.8, 1.0):
        recipe = LabelRecipe(zeta=zeta)
        expected = initial_pseudo_labels(GLOBAL, SNIPPETS, zeta=zeta)
        agg = recipe.aggregate(SNIPPETS)
        assert torch.equal(agg, expected["aggregate"])
        assert torch.equal(recipe.label(GLOBAL, agg), expected["final"])


def test_max_is_the_best_snippet():
    assert torch.equal(LabelRecipe("max").aggregate(SNIPPETS), torch.tensor([[0.75, 0.875]]))


def test_mean_averages_the_snippets():
    # (0.75 + 0.125 + 0.5) / 3 = 1.375 / 3 ; (0.25 + 0.875 + 0.5) / 3 = 1.625 / 3
    out = LabelRecipe("mean").aggregate(SNIPPETS)
    assert torch.allclose(out, torch.tensor([[1.375 / 3, 1.625 / 3]]), atol=0, rtol=1e-7)


def test_topk_averages_the_k_best():
    # k = 2: class 0 -> (0.75 + 0.5) / 2 = 0.625 ; class 1 -> (0.875 + 0.5) / 2 = 0.6875
    assert torch.equal(LabelRecipe("topk:2").aggregate(SNIPPETS), torch.tensor([[0.625, 0.6875]]))
    # k = 1 is max; k >= S is mean.
    assert torch.equal(
        LabelRecipe("topk:1").aggregate(SNIPPETS), LabelRecipe("max").aggregate(SNIPPETS)
    )
    assert torch.allclose(
        LabelRecipe("topk:9").aggregate(SNIPPETS), LabelRecipe("mean").aggregate(SNIPPETS)
    )


def test_padded_snippets_are_ignored_by_every_rule():
    # image 1 has two real snippets (0.5,0.25), (0.25,0.75) and one padding row of 1.0s.
    padded = torch.cat([SNIPPETS, torch.tensor([[[0.5, 0.25], [0.25, 0.75], [1.0, 1.0]]])])
    valid = torch.tensor([[True, True, True], [True, True, False]])
    assert torch.equal(LabelRecipe("max").aggregate(padded, valid)[1], torch.tensor([0.5, 0.75]))
    assert torch.equal(LabelRecipe("mean").aggregate(padded, valid)[1], torch.tensor([0.375, 0.5]))
    # top-3 of an image with two real snippets is their mean.
    assert torch.equal(
        LabelRecipe("topk:3").aggregate(padded, valid)[1], torch.tensor([0.375, 0.5])
    )
    assert torch.equal(LabelRecipe("topk:1").aggregate(padded, valid)[1], torch.tensor([0.5, 0.75]))


def test_alpha_beta_rules_match_the_snippet_rules():
    alpha, beta = torch.tensor([[0.75, 0.875]]), torch.tensor([[0.125, 0.25]])
    for recipe in (LabelRecipe(zeta=0.8), LabelRecipe("max")):
        assert torch.equal(recipe.aggregate_alpha_beta(alpha, beta), recipe.aggregate(SNIPPETS))
    with pytest.raises(ConfigError, match="needs every snippet"):
        LabelRecipe("mean").aggregate_alpha_beta(alpha, beta)


def test_mix_weights_global_and_local():
    local = torch.tensor([[0.125, 0.875]])
    # w = 0.25: 0.25 * 0.625 + 0.75 * 0.125 = 0.25 ; 0.25 * 0.375 + 0.75 * 0.875 = 0.75
    assert torch.equal(mix(GLOBAL, local, 0.25), torch.tensor([[0.25, 0.75]]))
    assert torch.equal(mix(GLOBAL, local, 0.0), local)
    assert torch.equal(mix(GLOBAL, local, 1.0), GLOBAL)
    assert torch.equal(mix(GLOBAL, local, 0.5), (GLOBAL + local) / 2)  # Eq. 7


def test_class_bias_is_the_mean_top1_score_per_class():
    scores = torch.tensor([[0.75, 0.25, 0.0], [0.5, 0.25, 0.25], [0.125, 0.875, 0.0]])
    # top-1: class 0 twice (0.75, 0.5 -> 0.625), class 1 once (0.875), class 2 never
    # (gets the mean of the others: (0.625 + 0.875) / 2 = 0.75).
    assert torch.equal(class_bias(scores), torch.tensor([0.625, 0.875, 0.75]))


def test_debias_rescales_by_mean_over_own_bias_and_clips():
    scores = torch.tensor([[0.5, 0.5, 0.25], [0.75, 0.125, 1.0]])
    bias = torch.tensor([0.5, 1.0, 0.75])  # mean 0.75
    # factors 1.5, 0.75, 1.0 ; 0.75 * 1.5 = 1.125 clips to 1.
    expected = torch.tensor([[0.75, 0.375, 0.25], [1.0, 0.09375, 1.0]])
    assert torch.equal(debias(scores, bias), expected)
    with pytest.raises(ValueError, match="positive"):
        debias(scores, torch.tensor([0.5, 0.0, 0.75]))


def test_recipe_bias_only_when_asked():
    labels = torch.tensor([[0.75, 0.25], [0.25, 0.5]])
    assert LabelRecipe().bias(labels) is None
    assert torch.equal(LabelRecipe(debias="class-mean").bias(labels), torch.tensor([0.75, 0.5]))


def test_bad_recipes_name_the_setting():
    with pytest.raises(ConfigError, match="unknown aggregation 'median'"):
        LabelRecipe("median")
    with pytest.raises(ConfigError, match="K must be >= 1"):
        LabelRecipe("topk:0")
    with pytest.raises(ConfigError, match="--global-weight"):
        LabelRecipe(global_weight=1.5)
    with pytest.raises(ConfigError, match="--debias"):
        LabelRecipe(debias="ccd")
    with pytest.raises(ConfigError, match="--zeta"):
        LabelRecipe(zeta=-0.1)


def test_recipe_names_itself():
    assert str(LabelRecipe()) == "paper(zeta=0.5) w=0.5"
    assert str(LabelRecipe("topk:3", global_weight=0.25, debias="class-mean")) == (
        "topk:3 w=0.25 debias=class-mean"
    )


def test_the_registry_spells_and_parses_every_rule():
    assert AGGREGATION_FORMS == "paper (Eq. 5-6), max, mean or topk:K"
    assert aggregation("topk:3")[0] is AGGREGATIONS["topk"]
    for name in ("topk", "max:2", "paper:1", "topk:x", "Max"):
        with pytest.raises(ConfigError, match=f"unknown aggregation '{name}'.* or topk:K"):
            aggregation(name)
    # Which rules alpha and beta are enough for, as the registry says.
    assert [LabelRecipe(a).needs_snippets for a in ("paper", "max", "mean", "topk:2")] == [
        False, False, True, True
    ]  # fmt: skip


def test_apply_reads_alpha_beta_when_enough_and_snippets_otherwise():
    alpha, beta = torch.tensor([[0.75, 0.875]]), torch.tensor([[0.125, 0.25]])
    # paper at zeta 0.8: alpha of class 1 only (0.875 >= 0.8), beta of class 0.
    out = LabelRecipe(zeta=0.8).apply(GLOBAL, alpha, beta)
    assert torch.equal(out["aggregate"], torch.tensor([[0.125, 0.875]]))
    assert torch.equal(out["final"], torch.tensor([[0.375, 0.625]]))
    # Given both, a rule that alpha/beta serve reads them (here: other numbers than the
    # snippets' alpha/beta, to see which were read).
    assert torch.equal(LabelRecipe("max").apply(GLOBAL, beta, alpha, SNIPPETS)["aggregate"], beta)
    mean = LabelRecipe("mean").apply(GLOBAL, alpha, beta, SNIPPETS)
    assert torch.equal(mean["aggregate"], torch.tensor([[1.375 / 3, 1.625 / 3]]))
    with pytest.raises(ConfigError, match="needs every snippet's scores"):
        LabelRecipe("mean").apply(GLOBAL, alpha, beta)
