"""Label-free thresholds against numbers worked out by hand."""

import math

import pytest
import torch

from cdul.core.method.thresholds import (
    MAX_SHARE,
    NO_EVIDENCE,
    RULES,
    calibrated,
    guarded_otsu_threshold,
    no_evidence,
    otsu,
    otsu_threshold,
)


def test_otsu_splits_where_the_between_group_variance_peaks():
    # Splits of 0.1 0.2 | 0.8 0.9 and its neighbours, w0 * w1 * (mu0 - mu1)^2:
    #   0.1 | 0.2 0.8 0.9   0.25 * 0.75 * (0.1 - 0.6333)^2 = 0.0533
    #   0.1 0.2 | 0.8 0.9   0.5 * 0.5 * (0.15 - 0.85)^2 = 0.1225  <- the best
    #   0.1 0.2 0.8 | 0.9   0.75 * 0.25 * (0.3667 - 0.9)^2 = 0.0533
    assert otsu_threshold(torch.tensor([0.9, 0.1, 0.8, 0.2])) == pytest.approx(0.8)
    # Unequal groups: 0 0 0 0 0 0 1 1 -> the upper group's smallest score, 1.
    assert otsu_threshold(torch.tensor([0.0] * 6 + [1.0] * 2)) == 1.0
    # Ties never straddle the cut: 0.2 0.2 0.2 | 0.7 (the split inside the 0.2s is skipped).
    assert otsu_threshold(torch.tensor([0.2, 0.2, 0.7, 0.2])) == pytest.approx(0.7)


def test_otsu_per_class_and_a_class_without_evidence():
    scores = torch.tensor([[0.1, 0.5], [0.2, 0.5], [0.8, 0.5], [0.9, 0.5]])
    thresholds = otsu(scores)
    assert thresholds[0].item() == pytest.approx(0.8) and math.isinf(thresholds[1].item())
    assert no_evidence(thresholds) == [1] and math.inf == NO_EVIDENCE
    assert not (scores >= thresholds).any(0)[1]  # never fires
    assert RULES["otsu"] is otsu


def test_calibrated_is_the_best_f1_per_class_lowest_on_a_tie():
    scores = torch.tensor([[0.1, 0.5, 0.3], [0.2, 0.5, 0.3], [0.8, 0.5, 0.3], [0.9, 0.5, 0.3]])
    targets = torch.tensor([[0, 1, 0], [1, 0, 0], [1, 1, 0], [1, 0, 0]])
    # class 0 (targets 0 1 1 1): top-1 F1 2/4, top-2 4/5, top-3 (>= 0.2) 6/6 = 1.
    # class 1: every score 0.5, one cut only: all four labelled, F1 = 2*2/(4+2) = 0.667.
    # class 2: no target at all -> never fires.
    got = calibrated(scores, targets)
    assert got[:2].tolist() == pytest.approx([0.2, 0.5]) and math.isinf(got[2].item())


def test_bad_scores_are_refused():
    with pytest.raises(ValueError, match=r"\(images, classes\)"):
        otsu(torch.rand(5))
    with pytest.raises(ValueError, match="no images"):
        otsu(torch.rand(0, 3))
    with pytest.raises(ValueError, match="NaN"):
        otsu(torch.tensor([[float("nan")]]))
    with pytest.raises(ValueError, match="differ in shape"):
        calibrated(torch.rand(4, 2), torch.ones(4, 3))


def test_a_class_that_scores_high_nearly_everywhere_is_split_again():
    # 0.1 0.2 | 0.6 0.62 0.64 0.66 0.9 0.95 0.97 1.0: Otsu's first split labels 8 of 10
    # (80% > 60%); within 0.6 .. 1.0 the best split is 0.6 0.62 0.64 0.66 | 0.9 0.95 0.97 1.0
    # (4 * 4 / 64 * (0.63 - 0.955)^2 = 0.0264, the largest), leaving 4 of 10 labelled.
    column = torch.tensor([0.1, 0.2, 0.6, 0.62, 0.64, 0.66, 0.9, 0.95, 0.97, 1.0])
    assert otsu_threshold(column) == pytest.approx(0.6)
    assert guarded_otsu_threshold(column) == pytest.approx(0.9)
    assert otsu(column[:, None], max_share=1.0).item() == pytest.approx(0.6)  # unguarded
    assert otsu(column[:, None]).item() == pytest.approx(0.9) and MAX_SHARE == 0.6
    # An upper group of equal scores cannot be split: it stays (never an infinite loop).
    assert guarded_otsu_threshold(torch.tensor([0.1, 0.8, 0.8, 0.8])) == pytest.approx(0.8)
    with pytest.raises(ValueError, match="max_share"):
        otsu(column[:, None], max_share=0.0)
