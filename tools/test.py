#!/usr/bin/env python
"""Evaluate a config clean / attacked / defended (mirrors mmseg's ``tools/test.py``).

A ``.py`` config is an MMSegmentation config, evaluated by its ``IoUMetric``; a ``.yaml``
config is a Detectron2 one (``EquiGeneralizedRCNN``), evaluated by ``COCOEvaluator`` with
``--opts KEY VALUE`` overrides as Detectron2's ``train_net.py`` takes them.

equi-ext is always imported here, so ``model.test_cfg.defense`` / ``attack`` are honoured
(stock MMSeg would silently ignore them). Each scenario is its own run of the config's
evaluator (MMSeg's ``IoUMetric``); the table goes to ``WORK_DIR/equi_results.{md,json}``.

Example::

    python tools/test.py configs/deeplabv3_voc_equi.py CHECKPOINT \
        --cfg-options model.test_cfg.defense=equi model.test_cfg.attack=pgd
    python tools/test.py configs/mask_rcnn_R_50_FPN_coco_equi.yaml CHECKPOINT --opts EQUI.ATTACK pgd
"""

from __future__ import annotations

import argparse
import os
import sys

from equi_ext.core.distributed import close_process_group
from equi_ext.pipeline import SCENARIOS


def parse_args(argv=None):
    from equi_ext.mmseg.cli import add_common_arguments

    parser = argparse.ArgumentParser(description="Evaluate a segmentor clean / attacked / defended")
    parser.add_argument("config", help="test config file path")
    parser.add_argument("checkpoint", nargs="?", help="checkpoint file (omit to test random weights)")
    parser.add_argument("--show-dir", help="directory to save painted predictions")
    parser.add_argument("--scenarios", help="comma-separated subset of " + ",".join(SCENARIOS)
                        + " (default: every scenario the config's defense/attack allow)")
    add_common_arguments(parser)
    return parser.parse_args(argv)


def prepare_config(args):
    from equi_ext.mmseg.cli import load_config

    cfg = load_config(args)
    if args.show_dir:
        hook = cfg.default_hooks.get("visualization")
        if hook is None:
            raise SystemExit("error: --show-dir needs a 'visualization' hook in default_hooks")
        hook.update(draw=True, interval=1)
        cfg.visualizer["save_dir"] = args.show_dir
    cfg.load_from = None  # loaded strictly below, so a mismatched checkpoint is an error
    return cfg


def detectron2_main(argv: list[str]) -> list[dict]:
    """``tools/test.py CONFIG.yaml [CHECKPOINT] [--opts KEY VALUE ...]``: COCO AP per scenario."""
    parser = argparse.ArgumentParser(description="Evaluate a Detectron2 model clean / attacked / defended")
    parser.add_argument("config", help="Detectron2 .yaml config (MODEL.META_ARCHITECTURE EquiGeneralizedRCNN)")
    parser.add_argument("checkpoint", nargs="?", help="weights (default: MODEL.WEIGHTS)")
    parser.add_argument("--work-dir", help="output directory (default: OUTPUT_DIR)")
    parser.add_argument("--scenarios", help="comma-separated subset of " + ",".join(SCENARIOS))
    parser.add_argument("--num-images", type=int, help="evaluate the first N images of DATASETS.TEST[0]")
    parser.add_argument("--num-gpus", type=int, default=1,
                        help="processes per machine: Detectron2's launch on GPUs, gloo processes without CUDA (default: 1)")
    parser.add_argument("--num-machines", type=int, default=1)
    parser.add_argument("--machine-rank", type=int, default=0)
    parser.add_argument("--dist-url", default="auto", help="e.g. tcp://HOST:PORT for several machines")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                        help="config overrides as KEY VALUE pairs, e.g. EQUI.DEFENSE equi EQUI.ATTACK pgd")
    args = parser.parse_args(argv)
    from equi_ext.detectron2 import load_config as load_d2_config
    from equi_ext.detectron2.launch import launch

    try:
        load_d2_config(args.config, args.opts)  # bad settings fail here, before any process starts
    except (FileNotFoundError, KeyError, ValueError, TypeError) as err:
        raise SystemExit(f"error: {err}") from None
    if args.num_gpus * args.num_machines == 1:
        return detectron2_evaluate(args)
    # Each process evaluates its shard (Detectron2's InferenceSampler); rank 0 writes the gathered results.
    launch(detectron2_evaluate, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
    return []


def detectron2_evaluate(args: argparse.Namespace) -> list[dict]:
    """One process's part of ``detectron2_main``: build, register the data, evaluate the scenarios."""
    from detectron2.utils.logger import setup_logger

    from equi_ext.detectron2 import evaluate_scenarios, register_from_cfg
    from equi_ext.detectron2 import load_config as load_d2_config

    try:
        cfg = load_d2_config(args.config, args.opts)
        if args.work_dir:
            cfg.OUTPUT_DIR = args.work_dir
        setup_logger(name="equi_ext")
        setup_logger(name="detectron2")
        register_from_cfg(cfg)
        rows = evaluate_scenarios(cfg, args.checkpoint or cfg.MODEL.WEIGHTS or None,
                                  scenarios=args.scenarios.split(",") if args.scenarios else None,
                                  num_images=args.num_images)
    except (FileNotFoundError, KeyError, ValueError, TypeError) as err:
        raise SystemExit(f"error: {err}") from None
    close_process_group()  # as a worker of Detectron2's launch
    return rows


def main(argv=None) -> list[dict]:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0].endswith((".yaml", ".yml")):
        return detectron2_main(argv)
    args = parse_args(argv)
    from equi_ext.core.checkpoints import CheckpointError
    from equi_ext.mmseg import build_equi_components
    from equi_ext.mmseg.cli import check_test_data
    from equi_ext.mmseg.evaluation import evaluate_scenarios

    cfg = prepare_config(args)
    if args.checkpoint is not None and not os.path.isfile(args.checkpoint):
        raise SystemExit(f"error: checkpoint {args.checkpoint!r} does not exist")
    try:
        build_equi_components(cfg.model.get("test_cfg", {}))
    except (KeyError, ValueError, TypeError) as err:
        raise SystemExit(f"error: bad equi-ext settings in model.test_cfg: {err}") from None
    scenarios = args.scenarios.split(",") if args.scenarios else None
    unknown = [s for s in scenarios or [] if s not in SCENARIOS]
    if unknown:
        raise SystemExit(f"error: unknown scenarios {unknown}; valid: {list(SCENARIOS)}")
    check_test_data(cfg)
    try:
        return evaluate_scenarios(cfg, args.checkpoint, scenarios)
    except CheckpointError as err:
        raise SystemExit(f"error: {err} (config {args.config!r})") from None


if __name__ == "__main__":
    main()
    close_process_group()
