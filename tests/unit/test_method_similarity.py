"""Eq. 1-4 against numbers worked out by hand."""

import math

import pytest
import torch

from cdul.core.method.similarity import class_scores, cosine_similarity, temperature


def test_temperature_is_exp_of_logit_scale_not_division():
    # OpenAI CLIP stores logit_scale = ln(100); the multiplier is 100, not 1/ln(100).
    assert temperature(math.log(100.0)).item() == pytest.approx(100.0, rel=1e-6)


def test_eq1_cosines_by_hand():
    images = torch.tensor([[3.0, 4.0], [1.0, 0.0]])  # norms 5 and 1
    prompts = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # norms 1 and 2
    cos = cosine_similarity(images, prompts)
    # [3,4]/5 . [1,0] = 0.6 ; [3,4]/5 . [0,1] = 0.8 ; [1,0] . [1,0] = 1 ; [1,0].[0,1] = 0
    assert torch.allclose(cos, torch.tensor([[0.6, 0.8], [1.0, 0.0]]), atol=1e-7)


def test_eq2_softmax_with_temperature_by_hand():
    cos = torch.tensor([[0.6, 0.8], [1.0, 0.0]])
    scores = class_scores(cos, math.log(10.0))  # t = 10
    # image 0: softmax(6, 8) -> 1/(1+e^2), 1/(1+e^-2) = 0.1192029, 0.8807971
    # image 1: softmax(10, 0) -> 1/(1+e^-10), 1/(1+e^10) = 0.9999546, 0.0000454
    expected = torch.tensor([[0.1192029, 0.8807971], [0.9999546, 4.539787e-5]])
    assert torch.allclose(scores, expected, atol=1e-6)
    assert torch.allclose(scores.sum(-1), torch.ones(2))


def test_divided_temperature_bug_would_be_near_uniform():
    # Guard: with t = 100 the scores are decisive; the public bug (cos / ln 100) is not.
    cos = torch.tensor([[0.30, 0.25]])
    right = class_scores(cos, math.log(100.0))
    assert right[0, 0].item() == pytest.approx(1 / (1 + math.exp(-5.0)), abs=1e-6)  # 0.9933
    buggy = torch.softmax(cos / math.log(100.0), dim=-1)
    assert buggy[0, 0].item() < 0.51


def test_eq3_4_snippets_broadcast_over_leading_dims():
    snippets = torch.tensor([[[3.0, 4.0], [0.0, 5.0]]])  # (N=1, S=2, D=2)
    prompts = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    cos = cosine_similarity(snippets, prompts)
    assert cos.shape == (1, 2, 2)
    assert torch.allclose(cos, torch.tensor([[[0.6, 0.8], [0.0, 1.0]]]))
    scores = class_scores(cos, 0.0)  # t = 1: softmax(0, 1) for snippet 1
    assert scores[0, 1, 1].item() == pytest.approx(math.e / (1 + math.e), abs=1e-6)


def test_zero_embedding_gives_zero_cosine_not_nan():
    cos = cosine_similarity(torch.zeros(1, 3), torch.eye(3))
    assert torch.equal(cos, torch.zeros(1, 3))


def test_shape_errors_name_the_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(4, 5\)"):
        cosine_similarity(torch.ones(2, 3), torch.ones(4, 5))
    with pytest.raises(ValueError, match="empty label set"):
        class_scores(torch.ones(2, 0), 0.0)
