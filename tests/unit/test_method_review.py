"""Review priorities (core/method/review.py) against numbers worked out by hand.

Scores are chosen so their logits are multiples of ln 2: logit(2/3) = ln 2,
logit(1/3) = -ln 2, logit(0.8) = ln 4 = 2 ln 2, logit(0.2) = -2 ln 2, logit(0.5) = 0.
"""

import math

import pytest
import torch

from cdul.core.method import review

LN2 = math.log(2.0)
SCORES = torch.tensor([[0.8, 1 / 3]])  # image 0: class 0 a label, class 1 not (t = 0.5)
HALF = torch.tensor([0.5, 0.5])


def test_distance_and_hard_labels():
    assert review.hard_labels(SCORES, HALF).tolist() == [[True, False]]
    # |2 ln2 - 0| and |-ln2 - 0|
    torch.testing.assert_close(
        review.distance(SCORES, HALF), torch.tensor([[2 * LN2, LN2]], dtype=torch.float64)
    )


def test_evidence_is_the_mean_of_each_piece_against_the_label():
    hard = review.hard_labels(SCORES, HALF)
    glob = torch.tensor([[1 / 3, 2 / 3]])  # against label 1: 0 - (-ln2) = ln2;
    #                                        against label 0: -(0 - ln2) = ln2
    snip = torch.tensor([[0.8, 0.2]])  # label 1: 0 - 2ln2 = -2ln2; label 0: -(0 + 2ln2) = -2ln2
    torch.testing.assert_close(
        review.against(hard, glob, HALF), torch.tensor([[LN2, LN2]], dtype=torch.float64)
    )
    torch.testing.assert_close(
        review.evidence(hard, [(glob, HALF), (snip, HALF)]),
        torch.tensor([[-LN2 / 2, -LN2 / 2]], dtype=torch.float64),
    )


def test_priority_order_and_scores():
    hard = review.hard_labels(SCORES, HALF)
    d = review.distance(SCORES, HALF)
    e = torch.tensor([[-LN2 / 2, -LN2 / 2]], dtype=torch.float64)
    # The out-of-fold classifier: 0.2 where the label is 1, 0.8 where it is 0: against
    # both labels by 2 ln2 (its thresholds 0.5).
    a = review.against(hard, torch.tensor([[0.2, 0.8]]), HALF)
    torch.testing.assert_close(a, torch.tensor([[2 * LN2, 2 * LN2]], dtype=torch.float64))
    r = review.priority(d, e, a)  # [-2ln2 - ln2/2 + 2ln2, -ln2 - ln2/2 + 2ln2]
    torch.testing.assert_close(r, torch.tensor([[-LN2 / 2, LN2 / 2]], dtype=torch.float64))
    torch.testing.assert_close(review.priority(d), -d)
    assert review.review_order(r).tolist() == [[0, 1], [0, 0]]  # class 1 first
    assert review.image_priority(r).item() == pytest.approx(LN2 / 2)
    # 1 / (1 + exp(ln2 / 2)) = 1 / (1 + sqrt 2)
    assert review.review_score(r)[0, 1].item() == pytest.approx(1 / (1 + math.sqrt(2)))


def test_ties_keep_row_major_order_and_thresholds_per_image():
    r = torch.tensor([[1.0, 2.0], [2.0, 1.0]])
    assert review.review_order(r).tolist() == [[0, 1], [1, 0], [0, 0], [1, 1]]
    hard = torch.tensor([[True], [True]])
    per_image = torch.tensor([[0.5], [0.8]])  # each image's fold's own threshold
    torch.testing.assert_close(
        review.against(hard, torch.tensor([[0.5], [0.5]]), per_image),
        torch.tensor([[0.0], [2 * LN2]], dtype=torch.float64),
    )


def test_extremes_are_finite():
    # A score of 0 against a "never" threshold (infinity): both clamp to EPS / 1 - EPS.
    d = review.distance(torch.tensor([[0.0]]), torch.tensor([math.inf]))
    assert math.isfinite(d.item())
    assert d.item() == pytest.approx(2 * math.log((1 - review.EPS) / review.EPS))


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="images, classes"):
        review.distance(torch.zeros(3), HALF)
    with pytest.raises(ValueError, match="2 classes but thresholds"):
        review.distance(SCORES, torch.zeros(3))
    with pytest.raises(ValueError, match="NaN"):
        review.distance(torch.tensor([[float("nan"), 0.1]]), HALF)
    with pytest.raises(ValueError, match="differ in shape"):
        review.against(torch.zeros(2, 2, dtype=torch.bool), SCORES, HALF)
    with pytest.raises(ValueError, match="at least one"):
        review.evidence(torch.zeros(1, 2, dtype=torch.bool), [])
