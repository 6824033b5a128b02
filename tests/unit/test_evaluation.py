"""Average precision against rankings worked out by hand."""

import json
import math

import pytest
import torch

from cdul.core.evaluation import best_f1_threshold, evaluate, format_table
from cdul.labels.evaluation import to_csv

SCORES = torch.tensor(
    [[0.9, 0.2, 0.5], [0.8, 0.7, 0.4], [0.3, 0.6, 0.3], [0.1, 0.4, 0.2]]
)  # fmt: skip
TARGETS = torch.tensor([[1, 1, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0]])  # image 3: no label


def test_ap_by_hand():
    result = evaluate(SCORES[:, :2], TARGETS[:, :2], ["a", "b"])
    # a: ranked + - + -  -> precisions at the positives 1/1, 2/3 -> AP 0.8333
    # b: ranked (0.7)+ (0.6)- (0.4)- (0.2)+ -> 1/1, 2/4 -> AP 0.75
    assert result.per_class["a"] == pytest.approx(5 / 6, abs=1e-6)
    assert result.per_class["b"] == pytest.approx(0.75, abs=1e-6)
    assert result.mean_ap == pytest.approx((5 / 6 + 0.75) / 2, abs=1e-6)
    assert result.positives == {"a": 2, "b": 2}
    assert result.num_images == 4
    assert result.classes_without_positives == ()


def test_class_without_positives_is_undefined_and_left_out_of_the_mean():
    # c has no positive image: its AP is 0/0, so the mAP is the mean of a and b only
    # ((5/6 + 3/4) / 2 = 19/24 = 0.7917; counting c as 0 would give 19/36 = 0.5278).
    result = evaluate(SCORES, TARGETS, ["a", "b", "c"])
    assert math.isnan(result.per_class["c"])
    assert result.mean_ap == pytest.approx(19 / 24, abs=1e-6)
    assert result.classes_without_positives == ("c",) and result.classes_in_mean == 2
    stored = result.to_dict()
    assert stored["mAP"] == pytest.approx(19 / 24, abs=1e-6)
    assert stored["per_class_ap"]["c"] is None and stored["classes_in_mAP"] == 2
    assert json.loads(json.dumps(stored, allow_nan=False)) == stored  # strict JSON: no NaN
    table = format_table({"global": result, "final": result}).splitlines()
    assert table[4].split() == ["c", "0", "-", "-", "*"]
    assert table[-2].split() == ["mAP", "4", "0.792", "0.792"]
    assert (
        table[-1]
        == "* no positive image: AP undefined; the mAP is the mean over the other 2 of 3 classes"
    )
    rows = to_csv({"global": result}).splitlines()
    assert rows[3] == "c,0,-" and rows[4] == "mAP,4,0.791667"


def test_a_subset_without_a_class_is_not_marked_down():
    # A perfect ranking of a and b on two images that show no c: mAP 1 (not 2/3).
    targets = torch.tensor([[1, 0, 0], [0, 1, 0]])
    result = evaluate(targets.float(), targets, ["a", "b", "c"])
    assert result.mean_ap == pytest.approx(1.0) and result.classes_in_mean == 2


def test_no_positive_at_all_leaves_the_map_undefined():
    result = evaluate(SCORES, torch.zeros_like(TARGETS), ["a", "b", "c"])
    assert math.isnan(result.mean_ap) and result.classes_in_mean == 0
    assert result.to_dict()["mAP"] is None
    assert format_table({"final": result}).splitlines()[-2].split() == ["mAP", "4", "-"]


def test_perfect_ranking_is_one():
    result = evaluate(TARGETS[:, :2].float(), TARGETS[:, :2], ["a", "b"])
    assert result.mean_ap == pytest.approx(1.0)


def test_table_has_a_column_per_result():
    res = evaluate(SCORES[:, :2], TARGETS[:, :2], ["a", "b"])
    table = format_table({"global": res, "aggregate": res, "final": res})
    header = table.splitlines()[0]
    assert header.split() == ["class", "pos", "global", "aggregate", "final"]
    assert "0.833" in table and "0.792" in table


@pytest.mark.parametrize(
    ("scores", "targets", "classes", "message"),
    [
        (SCORES, TARGETS, [], "empty label set"),
        (SCORES, TARGETS[:, :2], ["a", "b"], "must both be"),
        (SCORES, TARGETS, ["a", "b"], "3 columns but 2 classes"),
        (SCORES[:0], TARGETS[:0], ["a", "b", "c"], "zero images"),
        (SCORES * float("nan"), TARGETS, ["a", "b", "c"], "NaN"),
        (SCORES, TARGETS * 2, ["a", "b", "c"], "multi-hot"),
        (SCORES, TARGETS, ["a", "a", "c"], "unique"),
    ],
)
def test_bad_input_errors(scores, targets, classes, message):
    with pytest.raises(ValueError, match=message):
        evaluate(scores, targets, classes)


def test_best_f1_threshold_by_hand():
    # 4 positives: (0,a) (0,b) (1,b) (2,a).
    # t=0.25: 9 predicted, TP 3 ((0,b) is 0.2) -> F1 6/13; t=0.45: 5 predicted, TP 2 -> 4/9;
    # t=0.65: 3 predicted (0.9, 0.8, 0.7), TP 2 -> 4/7;  t=0.85: 1 predicted, TP 1 -> 2/5.
    threshold, f1 = best_f1_threshold(SCORES, TARGETS, grid=(0.25, 0.45, 0.65, 0.85))
    assert threshold == 0.65 and f1 == pytest.approx(4 / 7)


def test_best_f1_threshold_ties_take_the_lowest_and_shapes_are_checked():
    # nothing is ever predicted: every threshold scores 0, the grid's first (0.05) wins
    assert best_f1_threshold(torch.zeros(4, 3), TARGETS) == (0.05, 0.0)
    with pytest.raises(ValueError, match="must both be"):
        best_f1_threshold(SCORES[:, :2], TARGETS)
