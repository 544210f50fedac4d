"""What tools/train.py and tools/test.py share: argument parsing basics and config loading."""

from __future__ import annotations

import argparse
import os
import os.path as osp

import torch
from mmengine.config import Config, DictAction

from ..assets import config_path
from ..core.validation import SettingsError


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """The options MMSeg's own tools take: --work-dir, --cfg-options, --launcher, --local-rank."""
    parser.add_argument("--work-dir", help="directory for logs, checkpoints and results")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction,
                        help="override settings in the config, key=value pairs (xxx=yyy format)")
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0)


def load_config(args: argparse.Namespace) -> Config:
    """Read ``args.config`` (a path or ``equi_ext::NAME``), apply ``--cfg-options``, ``--launcher`` and the work dir (MMSeg's rules).

    With ``--launcher pytorch`` on a machine without CUDA this also starts the gloo process group.
    """
    os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    try:
        args.config = config_path(args.config)
    except FileNotFoundError as err:
        raise SettingsError(str(err)) from None
    if not osp.isfile(args.config):
        raise SettingsError(f"config file {args.config!r} does not exist")
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


def _leaf_datasets(dataset_cfg):
    """The configs of the datasets that read files, inside wrappers (Repeat/ClassBalanced/Concat)."""
    if "datasets" in dataset_cfg:
        for child in dataset_cfg["datasets"]:
            yield from _leaf_datasets(child)
    elif "dataset" in dataset_cfg:
        yield from _leaf_datasets(dataset_cfg["dataset"])
    else:
        yield dataset_cfg


def check_test_data(cfg: Config) -> None:
    """A ``SettingsError`` naming the setting when the test split's data root, image folder or annotation file
    does not exist or the image folder is empty: MMEngine would fail deep inside its file listing
    (``FileNotFoundError``) or its serialisation (``need at least one array to concatenate``).
    Remote paths (``s3://``...) are left to MMEngine's file backends.
    """
    fix = "set it with --cfg-options test_dataloader.dataset.data_root=PATH"
    for dataset in _leaf_datasets(cfg.test_dataloader.dataset):
        root = dataset.get("data_root") or ""
        img_dir = osp.join(root, (dataset.get("data_prefix") or {}).get("img_path", ""))
        ann_file = osp.join(root, dataset["ann_file"]) if dataset.get("ann_file") else ""
        for key, path in (("data_root", root), ("data_prefix.img_path", img_dir), ("ann_file", ann_file)):
            if path and "://" not in path and not osp.exists(path):
                raise SettingsError(f"test dataset {key} {path!r} does not exist; {fix}")
        if img_dir and "://" not in img_dir and not ann_file and not any(files for _, _, files in os.walk(img_dir)):
            raise SettingsError(f"test dataset folder {img_dir!r} holds no image; {fix}")


def load_test_config(args: argparse.Namespace) -> Config:
    """``load_config`` for ``tools/test.py``: ``--show-dir`` paints predictions through the config's
    visualization hook; the checkpoint is loaded strictly by the evaluation, not by ``load_from``."""
    cfg = load_config(args)
    if args.show_dir:
        hook = cfg.default_hooks.get("visualization")
        if hook is None:
            raise SettingsError("--show-dir needs a 'visualization' hook in default_hooks")
        hook.update(draw=True, interval=1)
        cfg.visualizer["save_dir"] = args.show_dir
    cfg.load_from = None
    return cfg
