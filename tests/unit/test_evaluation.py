"""Average precision against rankings worked out by hand."""

import pytest
import torch

from cdul.core.evaluation import best_f1_threshold, evaluate, format_table

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


def test_class_without_positives_gets_zero_and_counts_in_macro():
    result = evaluate(SCORES, TARGETS, ["a", "b", "c"])
    assert result.per_class["c"] == 0.0
    assert result.mean_ap == pytest.approx((5 / 6 + 0.75 + 0.0) / 3, abs=1e-6)
    assert result.classes_without_positives == ("c",)
    table = format_table({"global": result, "final": result})
    assert "* no positive image" in table
    assert "c " in table and table.splitlines()[-2].startswith("mAP")


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
