import math

import pytest
import torch

from equi_ext.core.metrics import greedy_worst_case, image_iou, worst_case_per_image


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


def test_worst_case_refuses_runs_over_different_images():
    with pytest.raises(ValueError, match="cover different images"):
        worst_case_per_image({"x": [record("a", 1.0, 0.0)], "y": [record("b", 1.0, 0.0)]})
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
