"""COCO mask/box AP of an ``EquiGeneralizedRCNN`` clean / attacked / defended, in one run.

Each scenario is one pass of Detectron2's ``inference_on_dataset`` with a fresh
``COCOEvaluator`` (pycocotools' official implementation). Attacks need ground truth at
test time, so the loader keeps the annotations (Detectron2's test mapper drops them).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog, build_detection_test_loader
from detectron2.data import detection_utils as utils
from detectron2.evaluation import COCOEvaluator, inference_on_dataset
from detectron2.modeling import build_model
from detectron2.utils import comm
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ..pipeline import SCENARIOS, default_scenarios, scenario_table
from .modeling import EquiGeneralizedRCNN

logger = logging.getLogger(__name__)


class _PredictedImagesCOCOEvaluator(COCOEvaluator):
    """COCO AP over the images actually predicted (a fixed subset of the split in tests and demos).

    When the model detects nothing on any image (e.g. under a strong attack), Detectron2 skips
    pycocotools and reports NaN; here pycocotools scores the empty result: AP 0 wherever there
    is ground truth (NaN only where there is none), as for any other weak prediction.
    """

    def evaluate(self, img_ids=None):
        ids = [p["image_id"] for p in self._predictions]
        if self._distributed:  # every process's images (the parent gathers the predictions themselves)
            ids = [i for rank_ids in comm.all_gather(ids) for i in rank_ids]
        self._eval_img_ids = ids
        return super().evaluate(img_ids=ids)

    def _derive_coco_results(self, coco_eval, iou_type, class_names=None):
        if coco_eval is None and self._eval_img_ids:  # Detectron2's "no predictions" case
            coco_dt = COCO()
            coco_dt.dataset = dict(images=self._coco_api.dataset["images"], annotations=[],
                                   categories=self._coco_api.dataset["categories"])
            coco_dt.createIndex()
            coco_eval = COCOeval(self._coco_api, coco_dt, iou_type)
            coco_eval.params.imgIds = self._eval_img_ids
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        return super()._derive_coco_results(coco_eval, iou_type, class_names)


def check_dataset(name: str) -> None:
    """Fail before building a model if ``name`` is not registered or its files do not exist
    (Detectron2 would fail later, deep inside its loader)."""
    if name not in DatasetCatalog.list():
        raise KeyError(f"DATASETS.TEST names {name!r}, which is not a registered dataset; register it first "
                       "(EQUI.SYNTHETIC_ROOT registers the synthetic shapes)")
    meta = MetadataCatalog.get(name)
    for key in ("json_file", "image_root"):
        path = meta.get(key, None)
        if path and not os.path.exists(path):
            raise FileNotFoundError(f"dataset {name!r}: {key} {path!r} does not exist (Detectron2's builtin "
                                    "datasets live under $DETECTRON2_DATASETS, default ./datasets)")


def build_annotated_test_loader(cfg, dataset_name: str, num_images: int | None = None):
    """Test-time resizing, annotations kept (transformed like the image) for the attacks' losses."""
    mapper = DatasetMapper(
        is_train=True,  # keeps and transforms annotations; augmentations are the test ones
        augmentations=utils.build_augmentation(cfg, is_train=False),
        image_format=cfg.INPUT.FORMAT,
        use_instance_mask=cfg.MODEL.MASK_ON,
        instance_mask_format=cfg.INPUT.MASK_FORMAT,
    )
    records = DatasetCatalog.get(dataset_name)
    if num_images is not None:
        records = records[:num_images]
    return build_detection_test_loader(records, mapper=mapper, num_workers=cfg.DATALOADER.NUM_WORKERS)


def load_weights(model: torch.nn.Module, weights: str | None) -> None:
    """Load ``weights`` strictly: a missing file or a checkpoint that does not fit is an error.

    Accepts Detectron2 checkpoints (``{"model": state_dict, ...}``) and bare state dicts, in
    fp32 or fp16 (cast to the model's dtype); Detectron2 model-zoo ``.pkl`` files go through
    ``DetectionCheckpointer`` (name conversion) instead.
    """
    if not weights:
        logger.warning("no MODEL.WEIGHTS / checkpoint given: evaluating randomly initialised weights")
        return
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"checkpoint {weights!r} does not exist")
    if weights.endswith(".pkl"):
        from detectron2.checkpoint import DetectionCheckpointer

        DetectionCheckpointer(model).load(weights)
        return
    ckpt = torch.load(weights, map_location="cpu", weights_only=False)
    state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, (torch.Tensor, np.ndarray)) for v in state.values()):
        mmengine = isinstance(ckpt, dict) and "state_dict" in ckpt
        hint = " (an MMEngine checkpoint: evaluate it with its MMSeg .py config)" if mmengine else ""
        raise ValueError(f"checkpoint {weights!r} holds no Detectron2 state dict (a 'model' mapping of tensors); "
                         f"found keys {sorted(ckpt)[:5] if isinstance(ckpt, dict) else type(ckpt).__name__}{hint}")
    state = {k.removeprefix("module."): torch.as_tensor(v) for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"checkpoint {weights!r} does not match the model:\n{err}") from None


def evaluate_scenarios(cfg, weights: str | None, *, scenarios: list[str] | None = None,
                       num_images: int | None = None, output_dir: str | None = None,
                       model: EquiGeneralizedRCNN | None = None) -> list[dict]:
    """Evaluate ``cfg.DATASETS.TEST[0]`` under each scenario; write ``equi_results.{md,json}``.

    Args:
        cfg: a config from :func:`equi_ext.detectron2.load_config` (``EquiGeneralizedRCNN``).
        weights: checkpoint path (None = the model's random initialisation).
        scenarios: subset of ``SCENARIOS``; default: every one the config's defense/attack allow.
        num_images: evaluate the first N images of the split only.
        output_dir: where results go (default ``cfg.OUTPUT_DIR``).
        model: an already built and loaded model (benchmarks reuse one across settings).

    Returns:
        One dict per scenario: segm/bbox AP (and AP50), mean equivariance score, images, seconds.
    """
    if not cfg.DATASETS.TEST:
        raise ValueError("DATASETS.TEST is empty: name the dataset to evaluate")
    dataset = cfg.DATASETS.TEST[0]
    check_dataset(dataset)
    if model is None:
        model = build_model(cfg)
        if not isinstance(model, EquiGeneralizedRCNN):
            raise ValueError(f"MODEL.META_ARCHITECTURE must be EquiGeneralizedRCNN for equi-ext evaluation; "
                             f"got {cfg.MODEL.META_ARCHITECTURE!r}")
        load_weights(model, weights)
    model.eval()
    if scenarios is None:
        scenarios = default_scenarios(model.pipeline.defends, model.pipeline.attack_cfg is not None)
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        raise ValueError(f"unknown scenarios {unknown}; valid: {list(SCENARIOS)}")
    out_dir = Path(output_dir or cfg.OUTPUT_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for scenario in scenarios:
        model.scenario, model.record_scores, model.scores = scenario, True, []
        evaluator = _PredictedImagesCOCOEvaluator(dataset, tasks=("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",),
                                                  distributed=True, output_dir=str(out_dir / scenario),
                                                  use_fast_impl=False)
        start = time.perf_counter()
        results = inference_on_dataset(model, build_annotated_test_loader(cfg, dataset, num_images), evaluator)
        scores = [s for rank_scores in comm.all_gather(list(model.scores)) for s in rank_scores]
        rows.append(dict(
            scenario=scenario,
            segm_AP=float(results.get("segm", {}).get("AP", float("nan"))),
            segm_AP50=float(results.get("segm", {}).get("AP50", float("nan"))),
            bbox_AP=float(results.get("bbox", {}).get("AP", float("nan"))),  # {} off the main process
            equivariance_score=sum(scores) / len(scores) if scores else None,
            images=len(scores), seconds=time.perf_counter() - start,
        ))
    model.scenario, model.record_scores = None, False
    if not comm.is_main_process():
        return rows
    table = scenario_table(rows, {"mask AP": "segm_AP", "mask AP50": "segm_AP50", "box AP": "bbox_AP"})
    (out_dir / "equi_results.md").write_text(table + "\n")
    (out_dir / "equi_results.json").write_text(json.dumps(
        dict(weights=weights, equi=json.loads(json.dumps(cfg.EQUI, default=str)), results=rows), indent=2))
    print(table)
    return rows
