import math

import pytest
import torch

from equi_ext.core.metrics import (
    confusion_matrix,
    greedy_worst_case,
    image_iou,
    iou_per_class,
    mean_iou,
    worst_case_per_image,
)


def test_image_iou_ignores_classes_absent_from_prediction_and_label():
    intersect, union = torch.tensor([5.0, 0.0, 2.0]), torch.tensor([10.0, 0.0, 8.0])
    assert image_iou(intersect, union) == pytest.approx((0.5 + 0.25) / 2 * 100)
    assert math.isnan(image_iou(torch.zeros(3), torch.zeros(3)))


def record(img, iou, loss):
    return dict(img=img, iou=iou, loss=loss)


def test_worst_case_takes_each_images_lowest_iou_then_highest_loss():
    runs = {
        "pgd": [record("a", 40.0, 1.0), record("b", 10.0, 2.0), record("c", 30.0, 1.0)],
        "bpda": [record("a", 20.0, 1.5), record("b", 50.0, 0.5), record("c", 30.0, 3.0)],
        "eot": [record("a", 25.0, 9.0), record("b", float("nan"), 9.0), record("c", 35.0, 9.0)],
    }
    # a: bpda has the lowest IoU; b: pgd (NaN never wins); c: tie at 30 → bpda's higher loss.
    assert worst_case_per_image(runs) == ["bpda", "pgd", "bpda"]


def test_worst_case_pick_is_each_images_minimum_over_runs():
    g = torch.Generator().manual_seed(0)
    runs = {name: [record(i, float(v), 0.0) for i, v in enumerate(torch.rand(20, generator=g) * 100)]
            for name in ("r1", "r2", "r3")}
    picks = worst_case_per_image(runs)
    for i, name in enumerate(picks):
        assert runs[name][i]["iou"] == min(run[i]["iou"] for run in runs.values())


def test_worst_case_refuses_runs_over_different_images_and_no_runs():
    with pytest.raises(ValueError, match="runs 'x' and 'y' cover different images"):
        worst_case_per_image({"x": [record("a", 1.0, 0.0)], "y": [record("b", 1.0, 0.0)]})
    with pytest.raises(ValueError, match="^worst_case_per_image needs at least one run$"):
        worst_case_per_image({})


def test_a_nan_quality_never_wins_whichever_run_comes_first():
    runs = {"nan": [record("a", float("nan"), 9.0)], "pgd": [record("a", 30.0, 1.0)]}
    assert worst_case_per_image(runs) == ["pgd"]


def test_confusion_matrix_and_iou_by_hand():
    targets = torch.tensor([0, 0, 1, 1, 255])
    preds = torch.tensor([0, 1, 1, 1, 0])
    confusion = confusion_matrix(preds, targets, num_classes=3)  # the default ignore_index 255 drops the last
    assert confusion.tolist() == [[1, 1, 0], [0, 2, 0], [0, 0, 0]]
    # class 0: 1 / (2 + 1 − 1); class 1: 2 / (2 + 3 − 2); class 2 absent from both → NaN
    ious = iou_per_class(confusion)
    assert ious[:2].tolist() == pytest.approx([0.5, 2 / 3]) and math.isnan(ious[2])
    assert confusion_matrix(torch.zeros(4), torch.zeros(4), num_classes=3).shape == (3, 3)
    with pytest.raises(ValueError, match=r"same shape; got \(2,\) and \(3,\)"):
        confusion_matrix(torch.zeros(2), torch.zeros(3), num_classes=2)
    assert image_iou(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.0])) == 100.0  # a one-pixel class counts
    assert mean_iou(preds, targets, num_classes=3) == pytest.approx((0.5 + 2 / 3) / 2 * 100)
    # ignore_index=1 drops the label-1 pixels: class 0 keeps 1 / 2, class 1 (predicted once, never labelled) 0
    assert mean_iou(preds[:4], targets[:4], num_classes=2, ignore_index=1) == pytest.approx(25.0)
    one_pixel = iou_per_class(confusion_matrix(torch.tensor([2, 0]), torch.tensor([2, 1]), num_classes=3))
    assert one_pixel[2] == 1.0 and one_pixel[0] == 0.0  # union of one pixel: IoU 1 (hit) and 0 (false positive)
    with pytest.raises(ValueError, match="at least one run"):
        worst_case_per_image({})


def test_greedy_worst_case_finds_the_mix_that_lowers_the_pooled_metric_most():
    """Pooled IoU Σ inter / Σ union: per image the lowest IoU picks (B, A) = 5/11, every image from A 6/20,
    from B 2/4; the lowest pool mixes them, (A, B) = 3/13, which neither per-image picking nor any single
    run finds."""
    def record(img, inter, union):
        return dict(img=img, inter=inter, union=union, iou=inter / union, loss=0.0)

    runs = {"A": [record(0, 1, 10), record(1, 5, 10)], "B": [record(0, 0, 1), record(1, 2, 3)]}

    def pooled(records):
        return sum(r["inter"] for r in records) / sum(r["union"] for r in records)

    assert worst_case_per_image(runs) == ["B", "A"]
    picks, value = greedy_worst_case(runs, pooled)
    assert picks == ["A", "B"] and value == pytest.approx(3 / 13)
    assert value <= min(pooled(r) for r in runs.values()) and value < 5 / 11


def table_metric(table, default=0.9):
    """A dataset metric given by a table over pick combinations (non-separable, as pooled metrics are)."""
    return lambda records: table.get(tuple(r["run"] for r in records), default)


def runs_of(names, qualities, key="iou"):
    return {name: [dict(img=i, run=name, loss=0.0, **{key: q}) for i, q in enumerate(qualities[name])]
            for name in names}


def test_greedy_starts_from_the_lowest_candidate_and_runs_rounds_until_nothing_improves():
    # per image every run but A looks harmless; the pooled metric needs C on image 0 *after* B on image 1
    runs = runs_of("ABC", {"A": [1, 1], "B": [50, 50], "C": [50, 50]})
    table = {("A", "A"): 0.5, ("A", "B"): 0.4, ("C", "B"): 0.1}
    picks, value = greedy_worst_case(runs, table_metric(table))
    assert (picks, value) == (["C", "B"], 0.1)  # round 1 moves image 1, round 2 image 0
    # a start that single switches cannot leave: only the lowest candidate (all B) reaches 0
    runs = runs_of("AB", {"A": [1, 1], "B": [50, 50]})
    table = {("A", "A"): 0.5, ("B", "B"): 0.0, ("A", "B"): 1.0, ("B", "A"): 1.0}
    assert greedy_worst_case(runs, table_metric(table)) == (["B", "B"], 0.0)


def test_greedy_treats_a_nan_metric_as_nothing_to_measure_and_takes_the_quality_key():
    runs = runs_of("AB", {"A": [10, 10], "B": [20, 20]}, key="mask_ap")
    table = {("A", "A"): float("nan"), ("B", "B"): 0.7}
    picks, value = greedy_worst_case(runs, table_metric(table), quality="mask_ap")
    assert picks == ["B", "B"] and value == 0.7
