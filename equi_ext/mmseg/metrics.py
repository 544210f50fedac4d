"""``PerImageIoUMetric``: MMSeg's ``IoUMetric`` that also keeps each image's areas and loss;
``EquiScoreMetric``: the mean per-image score the defended model puts on its outputs.

The honest robust number is a per-image worst case over every attack run (AutoAttack /
RobustBench style), which needs each image's intersection/union and task loss; IoUMetric
only keeps their sums. The dataset numbers it reports are IoUMetric's own.

With ``record_dir`` set, each image's record is also written there as it is processed (temp
file + rename), so a long run killed mid-way keeps every finished image (``--resume``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from mmengine.evaluator import BaseMetric
from mmseg.evaluation import IoUMetric
from mmseg.registry import METRICS

from ..core.metrics import image_iou
from ..pipeline import SCORE_KEY
from ..reporting import atomic_write_json, read_record, record_path


@METRICS.register_module()
class PerImageIoUMetric(IoUMetric):
    """After ``evaluate()``, ``per_image`` lists one dict per image: ``img`` (its path),
    ``areas`` (IoUMetric's intersect/union/pred/label tuple), ``iou`` (percent), ``loss``
    (pixel cross-entropy of the predicted logits, ignore_index excluded; NaN without logits) and ``score``
    (its equivariance score when the scenario records scores, else None).

    Args:
        record_dir: if set, write each processed image's record to ``record_dir/<file name>.json``.
    """

    def __init__(self, record_dir: str | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.record_dir = record_dir
        self.per_image: list[dict] = []

    def process(self, data_batch: dict, data_samples: Sequence[dict]) -> None:
        start = len(self.results)
        super().process(data_batch, data_samples)
        for index, sample in zip(range(start, len(self.results)), data_samples):
            self.results[index] = (*self.results[index], sample["img_path"], self._loss(sample),
                                   sample.get(SCORE_KEY))
            if self.record_dir is not None:
                *areas, img, loss, score = self.results[index]
                atomic_write_json(record_path(self.record_dir, img), self._record(areas, img, loss, score))

    @staticmethod
    def _record(areas: Sequence[torch.Tensor], img: str, loss: float, score: float | None) -> dict:
        return dict(img=img, areas=tuple(areas), iou=image_iou(areas[0], areas[1]), loss=loss,
                    score=None if score is None else float(score))

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
        self.per_image = [self._record(areas, img, loss, score) for *areas, img, loss, score in results]
        return super().compute_metrics([r[:4] for r in results])

    def metrics_of(self, areas: Sequence[tuple[torch.Tensor, ...]]) -> dict[str, float]:
        """IoUMetric's dataset metrics over any choice of per-image areas (e.g. a worst case)."""
        return super().compute_metrics(list(areas))


@METRICS.register_module()
class EquiScoreMetric(BaseMetric):
    """Mean of the scores that a scenario with ``record_scores`` puts on each data sample
    (``metainfo['equi_score']``), over every process's images: ``equi/score`` (absent when no image
    carries one) and ``equi/images``. After ``evaluate()``, ``image_scores`` lists them in data order
    (on the main process). Add it beside the task metric: ``test_evaluator=[dict(type='IoUMetric'),
    dict(type='EquiScoreMetric')]``; equi-ext's evaluations add it to their runner themselves.
    """

    default_prefix = "equi"

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.image_scores: list[float] = []

    def process(self, data_batch: dict, data_samples: Sequence[dict]) -> None:
        self.results.extend(float(s[SCORE_KEY]) for s in data_samples if s.get(SCORE_KEY) is not None)

    def compute_metrics(self, results: list) -> dict[str, float]:
        self.image_scores = list(results)
        metrics = {"images": len(results)}
        if results:
            metrics["score"] = sum(results) / len(results)
        return metrics


def load_record(path: str | os.PathLike) -> dict:
    """A record written with ``record_dir``, its areas back as tensors (counts are exact in float32)."""
    record = read_record(path)
    record["areas"] = tuple(torch.tensor(a, dtype=torch.float32) for a in record["areas"])
    return record
