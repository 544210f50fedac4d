#!/usr/bin/env python
"""Train an MMSegmentation model (mirrors mmseg's ``tools/train.py``), with equi-ext registered.

Example (the demo model, ~10 min on 2 CPU cores)::

    python tools/train.py configs/demo/deeplabv3_r18c16-d8_1xb8-3k_synthetic-128x128.py
"""

from __future__ import annotations

import argparse

from mmengine.runner import Runner

import equi_ext.mmseg  # noqa: F401  (registers datasets and the defense wrapper)
from equi_ext.core.distributed import close_process_group
from equi_ext.core.validation import SettingsError
from equi_ext.mmseg.cli import add_common_arguments, load_config
from equi_ext.tooling import start_tool


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Train a segmentor")
    parser.add_argument("config", help="train config file path")
    parser.add_argument("--resume", action="store_true", help="resume from the latest checkpoint in work-dir")
    add_common_arguments(parser)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    try:
        cfg = load_config(args)
    except SettingsError as err:
        raise SystemExit(f"error: {err}") from None
    cfg.resume = args.resume
    runner = Runner.from_cfg(cfg)
    runner.train()


if __name__ == "__main__":
    start_tool()
    main()
    close_process_group()
