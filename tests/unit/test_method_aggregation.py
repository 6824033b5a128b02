"""Eq. 5-7 against numbers worked out by hand (binary fractions, so exact)."""

import pytest
import torch

from cdul.core.method.aggregation import (
    aggregate,
    alpha_beta,
    initial_pseudo_labels,
    pseudo_label,
)

# One image, three snippets, two classes.
SNIPPETS = torch.tensor([[[0.75, 0.25], [0.125, 0.875], [0.5, 0.5]]])
GLOBAL = torch.tensor([[0.625, 0.375]])


def test_eq5_alpha_is_max_beta_is_min():
    alpha, beta = alpha_beta(SNIPPETS)
    assert torch.equal(alpha, torch.tensor([[0.75, 0.875]]))
    assert torch.equal(beta, torch.tensor([[0.125, 0.25]]))


def test_eq6_zeta_between_the_alphas():
    # zeta 0.8: class 0 (alpha 0.75) falls back to beta 0.125, class 1 keeps 0.875.
    alpha, beta = alpha_beta(SNIPPETS)
    assert torch.equal(aggregate(alpha, beta, 0.8), torch.tensor([[0.125, 0.875]]))


def test_eq6_alpha_exactly_at_zeta_counts_as_confident():
    alpha, beta = alpha_beta(SNIPPETS)
    assert torch.equal(aggregate(alpha, beta, 0.75), torch.tensor([[0.75, 0.875]]))
    # ... and just above it does not.
    assert torch.equal(aggregate(alpha, beta, 0.7500001), torch.tensor([[0.125, 0.875]]))


def test_eq6_zeta_extremes():
    alpha, beta = alpha_beta(SNIPPETS)
    assert torch.equal(aggregate(alpha, beta, 0.0), alpha)  # every alpha >= 0
    assert torch.equal(aggregate(alpha, beta, 1.0), beta)  # no alpha reaches 1


def test_eq7_final_is_mean_of_global_and_aggregate():
    out = initial_pseudo_labels(GLOBAL, SNIPPETS, zeta=0.8)
    # (0.625 + 0.125) / 2 = 0.375 ; (0.375 + 0.875) / 2 = 0.625
    assert torch.equal(out["final"], torch.tensor([[0.375, 0.625]]))
    assert torch.equal(pseudo_label(GLOBAL, out["aggregate"]), out["final"])


def test_single_snippet_aggregate_equals_snippet_whatever_zeta():
    one = torch.tensor([[[0.25, 0.75]]])
    for zeta in (0.0, 0.5, 1.0):
        out = initial_pseudo_labels(torch.tensor([[0.5, 0.5]]), one, zeta=zeta)
        assert torch.equal(out["aggregate"], torch.tensor([[0.25, 0.75]]))
        assert torch.equal(out["final"], torch.tensor([[0.375, 0.625]]))


def test_batch_of_images_matches_one_by_one():
    # Equal bits by construction, on any machine and any batch shape: max, min and select
    # are exact and (g + a) / 2 is one correctly rounded add and an exact halving.
    snippets = torch.rand(5, 9, 4)
    glob = torch.rand(5, 4)
    batch = initial_pseudo_labels(glob, snippets, zeta=0.5)
    for i in range(5):
        single = initial_pseudo_labels(glob[i : i + 1], snippets[i : i + 1], zeta=0.5)
        assert torch.equal(batch["final"][i], single["final"][0])


def test_padded_snippets_are_ignored():
    # image 0 has 3 real snippets; image 1 has one real snippet and two padding rows
    # whose values (0.0 and 1.0) would change max and min if they were counted.
    padded = torch.cat([SNIPPETS, torch.tensor([[[0.5, 0.25], [0.0, 0.0], [1.0, 1.0]]])])
    valid = torch.tensor([[True, True, True], [True, False, False]])
    alpha, beta = alpha_beta(padded, valid)
    assert torch.equal(alpha, torch.tensor([[0.75, 0.875], [0.5, 0.25]]))
    assert torch.equal(beta, torch.tensor([[0.125, 0.25], [0.5, 0.25]]))


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="images, snippets, classes"):
        alpha_beta(torch.ones(2, 3))
    with pytest.raises(ValueError, match="zero snippets"):
        alpha_beta(torch.ones(2, 0, 3))
    with pytest.raises(ValueError, match="zeta"):
        aggregate(torch.ones(1, 2), torch.ones(1, 2), 1.5)
    with pytest.raises(ValueError, match="no valid snippet"):
        alpha_beta(torch.ones(1, 2, 2), torch.tensor([[False, False]]))
    with pytest.raises(ValueError, match="do not match"):
        initial_pseudo_labels(torch.ones(1, 3), SNIPPETS)
