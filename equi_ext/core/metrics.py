"""mIoU for plain-torch evaluation (the MMSeg path uses MMSeg's own ``IoUMetric``)."""

from __future__ import annotations

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
