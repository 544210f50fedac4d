#!/usr/bin/env python
"""Train an MMSegmentation model (mirrors mmseg's ``tools/train.py``), with equi-ext registered.

Example (the demo model, ~10 min on 2 CPU cores)::

    python tools/train.py configs/demo/deeplabv3_r18c16-d8_1xb8-3k_synthetic-128x128.py
"""

from __future__ import annotations

import argparse
import os
import os.path as osp
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmengine.config import Config, DictAction  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

import equi_ext.mmseg  # noqa: E402,F401  (registers datasets and the defense wrapper)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Train a segmentor")
    parser.add_argument("config", help="train config file path")
    parser.add_argument("--work-dir", help="the dir to save logs and models")
    parser.add_argument("--resume", action="store_true", help="resume from the latest checkpoint in work-dir")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction,
                        help="override settings in the config, key=value pairs (xxx=yyy format)")
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if not osp.isfile(args.config):
        raise SystemExit(f"error: config file {args.config!r} does not exist")
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get("work_dir", None) is None:
        cfg.work_dir = osp.join("./work_dirs", osp.splitext(osp.basename(args.config))[0])
    cfg.resume = args.resume
    runner = Runner.from_cfg(cfg)
    runner.train()


if __name__ == "__main__":
    main()
