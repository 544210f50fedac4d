#!/usr/bin/env python
"""Evaluate a config clean / attacked / defended (mirrors mmseg's ``tools/test.py``).

A ``.py`` config is an MMSegmentation config, evaluated by its ``IoUMetric``; a ``.yaml``
config is a Detectron2 one (``EquiGeneralizedRCNN``), evaluated by ``COCOEvaluator`` with
``--opts KEY VALUE`` overrides as Detectron2's ``train_net.py`` takes them.

equi-ext is always imported here, so ``model.test_cfg.defense`` / ``attack`` are honoured
(stock MMSeg would silently ignore them). Each scenario is its own run of the config's
evaluator; the table goes to ``WORK_DIR/equi_results.{md,json}``.

Example::

    python tools/test.py configs/deeplabv3_voc_equi.py CHECKPOINT \
        --cfg-options model.test_cfg.defense=equi model.test_cfg.attack=pgd
    python tools/test.py configs/mask_rcnn_R_50_FPN_coco_equi.yaml CHECKPOINT --opts EQUI.ATTACK pgd
"""

from __future__ import annotations

import argparse
import sys

from equi_ext.core.checkpoints import CheckpointError
from equi_ext.core.distributed import close_process_group
from equi_ext.core.validation import SettingsError
from equi_ext.pipeline import SCENARIOS
from equi_ext.tooling import start_tool

SCENARIOS_HELP = "comma-separated subset of " + ",".join(SCENARIOS) + " (default: every one the settings allow)"


def parse_mmseg_args(argv: list[str]) -> argparse.Namespace:
    from equi_ext.mmseg.cli import add_common_arguments

    parser = argparse.ArgumentParser(
        description="Evaluate a segmentor clean / attacked / defended",
        epilog="A .yaml config is a Detectron2 one, with its own options (--opts KEY VALUE, --num-images, --num-gpus, "
               "--num-machines, --machine-rank, --dist-url): see tools/test.py CONFIG.yaml --help")
    parser.add_argument("config", help="test config file path")
    parser.add_argument("checkpoint", nargs="?", help="checkpoint file (omit to test random weights)")
    parser.add_argument("--show-dir", help="directory to save painted predictions")
    parser.add_argument("--scenarios", help=SCENARIOS_HELP)
    add_common_arguments(parser)
    return parser.parse_args(argv)


def parse_detectron2_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Evaluate a Detectron2 model clean / attacked / defended")
    parser.add_argument("config", help="Detectron2 .yaml config (MODEL.META_ARCHITECTURE EquiGeneralizedRCNN)")
    parser.add_argument("checkpoint", nargs="?", help="weights (default: MODEL.WEIGHTS)")
    parser.add_argument("--work-dir", help="output directory (default: OUTPUT_DIR)")
    parser.add_argument("--scenarios", help=SCENARIOS_HELP)
    parser.add_argument("--num-images", type=int, help="evaluate the first N images of DATASETS.TEST[0]")
    parser.add_argument("--num-gpus", type=int, default=1,
                        help="processes per machine: Detectron2's launch on GPUs, gloo processes without CUDA (default: 1)")
    parser.add_argument("--num-machines", type=int, default=1)
    parser.add_argument("--machine-rank", type=int, default=0)
    parser.add_argument("--dist-url", default="auto", help="e.g. tcp://HOST:PORT for several machines")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                        help="config overrides as KEY VALUE pairs, e.g. EQUI.DEFENSE equi EQUI.ATTACK pgd")
    return parser.parse_args(argv)


def main(argv=None) -> list[dict]:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv and argv[0].endswith((".yaml", ".yml")):  # only the adapter of the config is imported
            from equi_ext.detectron2.evaluation import evaluate_config

            args = parse_detectron2_args(argv)
            return evaluate_config(
                args.config, args.checkpoint, opts=args.opts, num_images=args.num_images, output_dir=args.work_dir,
                scenarios=args.scenarios.split(",") if args.scenarios else None, num_processes=args.num_gpus,
                num_machines=args.num_machines, machine_rank=args.machine_rank, dist_url=args.dist_url)
        from equi_ext.mmseg.cli import load_test_config
        from equi_ext.mmseg.evaluation import evaluate_scenarios

        args = parse_mmseg_args(argv)
        return evaluate_scenarios(load_test_config(args), args.checkpoint,
                                  args.scenarios.split(",") if args.scenarios else None)
    except (SettingsError, CheckpointError) as err:
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    start_tool()
    main()
    close_process_group()
