"""mIoU for plain-torch evaluation (the MMSeg path uses MMSeg's own ``IoUMetric``)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def confusion_matrix(preds: torch.Tensor, targets: torch.Tensor, num_classes: int,
                     ignore_index: int = 255) -> torch.Tensor:
    """(num_classes, num_classes) counts, rows = ground truth, columns = prediction."""
    if preds.shape != targets.shape:
        raise ValueError(f"preds and targets must have the same shape; got {tuple(preds.shape)} and "
                         f"{tuple(targets.shape)}")
    valid = targets != ignore_index
    index = targets[valid].long() * num_classes + preds[valid].long()
    return torch.bincount(index, minlength=num_classes * num_classes).view(num_classes, num_classes)


def iou_per_class(confusion: torch.Tensor) -> torch.Tensor:
    """IoU of each class; NaN for classes absent from both prediction and ground truth."""
    confusion = confusion.double()
    inter = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.full_like(inter, float("nan")))


def mean_iou(preds: torch.Tensor, targets: torch.Tensor, num_classes: int, ignore_index: int = 255) -> float:
    """Dataset-level mIoU in percent over classes present in prediction or ground truth."""
    ious = iou_per_class(confusion_matrix(preds, targets, num_classes, ignore_index))
    return float(ious.nanmean() * 100)


def image_iou(intersect: torch.Tensor, union: torch.Tensor) -> float:
    """One image's mean IoU in percent over the classes in its prediction or ground truth (NaN if none)."""
    present = union > 0
    if not bool(present.any()):
        return float("nan")
    return float((intersect[present].double() / union[present].double()).mean() * 100)


def worst_case_per_image(runs: dict[str, list[dict]], quality: str = "iou") -> list[str]:
    """For each image, the name of the run that hurt it most: lowest per-image quality (``iou``
    for segmentation, e.g. ``mask_ap`` for instances), ties → highest loss.

    ``runs`` maps a run name (an attack) to one record per image, in the same image order,
    each with ``img`` (an id), the ``quality`` key and ``loss``. This is the per-image worst
    case that AutoAttack/RobustBench report; a dataset metric over these picks pools
    intersections and unions (or detections), so it is usually, not provably, below that of
    every single run.
    """
    if not runs:
        raise ValueError("worst_case_per_image needs at least one run")
    names = list(runs)
    images = [r["img"] for r in runs[names[0]]]
    for name in names[1:]:
        other = [r["img"] for r in runs[name]]
        if other != images:
            raise ValueError(f"runs {names[0]!r} and {name!r} cover different images (or another order)")

    def harm(name: str, i: int) -> tuple[float, float]:
        value = runs[name][i][quality]
        return (float("inf") if value != value else value, -runs[name][i]["loss"])  # NaN: nothing to hurt

    return [min(names, key=lambda name: harm(name, i)) for i in range(len(images))]


def greedy_worst_case(runs: dict[str, list[dict]], dataset_metric: Callable[[list[dict]], float], *,
                      quality: str = "iou", max_rounds: int = 5) -> tuple[list[str], float]:
    """Per image, the run whose record to pool so that ``dataset_metric`` (lower = more broken) is lowest.

    A dataset metric pools images (mIoU sums intersections and unions, COCO AP ranks detections across
    images), so the per-image picks of :func:`worst_case_per_image` need not minimise it. The search starts
    from the lowest of those picks and every single run, then, image by image in a fixed order, switches an
    image to another run's record whenever that lowers the metric, in rounds until a round gains at most
    1e-6 (at most ``max_rounds``). The result is never above the strongest single run and every image keeps
    a record an attack produced. Cost: images × runs metric evaluations per round. Returns (picks, metric).
    """
    per_image = worst_case_per_image(runs, quality)
    names = list(runs)

    def pooled(picks: list[str]) -> float:
        value = dataset_metric([runs[name][i] for i, name in enumerate(picks)])
        return math.inf if value != value else value  # NaN: nothing left to measure

    candidates = [per_image] + [[name] * len(per_image) for name in names]
    best, picks = min(((pooled(c), c) for c in candidates), key=lambda scored: scored[0])
    for _ in range(max_rounds):
        start = best
        for i in range(len(picks)):
            for name in names:
                if name != picks[i]:
                    trial = picks[:i] + [name] + picks[i + 1:]
                    value = pooled(trial)
                    if value < best - 1e-9:
                        picks, best = trial, value
        if start - best <= 1e-6:
            break
    return picks, best
