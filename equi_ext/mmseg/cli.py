"""What tools/train.py and tools/test.py share: argument parsing basics and config loading."""

from __future__ import annotations

import argparse
import os
import os.path as osp

import torch
from mmengine.config import Config, DictAction


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """The options MMSeg's own tools take: --work-dir, --cfg-options, --launcher, --local-rank."""
    parser.add_argument("--work-dir", help="directory for logs, checkpoints and results")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction,
                        help="override settings in the config, key=value pairs (xxx=yyy format)")
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0)


def load_config(args: argparse.Namespace) -> Config:
    """Read ``args.config``, apply ``--cfg-options``, ``--launcher`` and the work dir (MMSeg's rules).

    With ``--launcher pytorch`` on a machine without CUDA this also starts the gloo process group.
    """
    os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    if not osp.isfile(args.config):
        raise SystemExit(f"error: config file {args.config!r} does not exist")
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.launcher == "pytorch" and not torch.cuda.is_available():
        # CPU processes (`torchrun --nproc_per_node 2 ... --launcher pytorch`): MMEngine's pytorch launcher
        # calls torch.cuda.set_device, so the gloo process group is started here; the Runner then finds it
        # initialised and only reads rank and world size from it.
        cfg.setdefault("env_cfg", {}).setdefault("dist_cfg", {})["backend"] = "gloo"
        if cfg.get("model_wrapper_cfg") is None:  # MMEngine's default passes a GPU index as device_ids
            cfg.model_wrapper_cfg = dict(type="MMDistributedDataParallel", device_ids=None, broadcast_buffers=False)
        if not torch.distributed.is_initialized():
            torch.distributed.init_process_group(backend="gloo")
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get("work_dir", None) is None:
        cfg.work_dir = osp.join("./work_dirs", osp.splitext(osp.basename(args.config))[0])
    return cfg
