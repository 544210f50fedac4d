"""``PerImageIoUMetric``: MMSeg's ``IoUMetric`` that also keeps each image's areas and loss.

The honest robust number is a per-image worst case over every attack run (AutoAttack /
RobustBench style), which needs each image's intersection/union and task loss; IoUMetric
only keeps their sums. The dataset numbers it reports are IoUMetric's own.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from mmseg.evaluation import IoUMetric
from mmseg.registry import METRICS

from ..core.metrics import image_iou


@METRICS.register_module()
class PerImageIoUMetric(IoUMetric):
    """After ``evaluate()``, ``per_image`` lists one dict per image: ``img`` (its path),
    ``areas`` (IoUMetric's intersect/union/pred/label tuple), ``iou`` (percent) and ``loss``
    (pixel cross-entropy of the predicted logits, ignore_index excluded; NaN without logits)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.per_image: list[dict] = []

    def process(self, data_batch: dict, data_samples: Sequence[dict]) -> None:
        start = len(self.results)
        super().process(data_batch, data_samples)
        for index, sample in zip(range(start, len(self.results)), data_samples):
            self.results[index] = (*self.results[index], sample["img_path"], self._loss(sample))

    def _loss(self, sample: dict) -> float:
        logits = sample.get("seg_logits", {}).get("data")
        if logits is None:
            return float("nan")
        label = sample["gt_sem_seg"]["data"].squeeze(0).long().to(logits.device)
        if logits.shape[-2:] != label.shape[-2:]:
            return float("nan")
        loss = F.cross_entropy(logits[None].float(), label[None], ignore_index=self.ignore_index)
        return float(loss)

    def compute_metrics(self, results: list) -> dict[str, float]:
        self.per_image = [dict(img=img, areas=tuple(areas), iou=image_iou(areas[0], areas[1]), loss=loss)
                          for *areas, img, loss in results]
        return super().compute_metrics([r[:4] for r in results])

    def metrics_of(self, areas: Sequence[tuple[torch.Tensor, ...]]) -> dict[str, float]:
        """IoUMetric's dataset metrics over any choice of per-image areas (e.g. a worst case)."""
        return super().compute_metrics(list(areas))
