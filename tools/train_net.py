#!/usr/bin/env python
"""Train or evaluate a Detectron2 model (mirrors Detectron2's ``tools/train_net.py``), with equi-ext.

Training is Detectron2's ``DefaultTrainer`` evaluated by ``COCOEvaluator``. ``--eval-only``
evaluates clean / attacked / defended as ``tools/test.py`` does for ``.yaml`` configs.

Example (the demo Mask R-CNN, ~20 min on 2 CPU cores)::

    python tools/train_net.py --config-file configs/demo/mask_rcnn_R18_FPN_synthetic-128x128.yaml
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup
from detectron2.evaluation import COCOEvaluator
from detectron2.utils.events import CommonMetricPrinter, JSONWriter

from equi_ext.core.distributed import close_process_group
from equi_ext.detectron2 import evaluate_scenarios, load_config, register_from_cfg
from equi_ext.detectron2.launch import cpu_ddp, launch
from equi_ext.tooling import start_tool


class Trainer(DefaultTrainer):
    """Detectron2's default training loop, also over several CPU processes; evaluation by COCO AP (boxes and
    masks)."""

    def __init__(self, cfg):
        with cpu_ddp():
            super().__init__(cfg)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_folder = output_folder or str(Path(cfg.OUTPUT_DIR) / "inference")
        # The fast evaluator is C++ that the registry-built detectron2 lacks; pycocotools gives the same AP.
        return COCOEvaluator(dataset_name, output_dir=output_folder, use_fast_impl=False)

    def build_writers(self):
        """Detectron2's writers, less TensorBoard where it is not installed (equi-ext does not require it)."""
        if importlib.util.find_spec("tensorboard") is not None:
            return super().build_writers()
        return [CommonMetricPrinter(self.max_iter), JSONWriter(str(Path(self.cfg.OUTPUT_DIR) / "metrics.json"))]


def setup(args):
    try:
        cfg = load_config(args.config_file, args.opts)
    except (FileNotFoundError, ValueError, KeyError) as err:
        raise SystemExit(f"error: {err}") from None
    cfg.freeze()
    default_setup(cfg, args)
    register_from_cfg(cfg)
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        result = evaluate_scenarios(cfg, cfg.MODEL.WEIGHTS or None)
    else:
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        result = trainer.train()
    close_process_group()  # a worker of Detectron2's launch ends its group before exiting
    return result


if __name__ == "__main__":
    start_tool()
    args = default_argument_parser().parse_args()
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
