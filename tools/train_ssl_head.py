#!/usr/bin/env python
"""Train the self-supervised head of the ``rotation`` or ``contrastive`` baseline on a frozen model.

The head reads exactly the dense view the defense uses at test time: for a ``.py``
(MMSegmentation) config the runtime's feature function (``model.test_cfg.feature_layer``,
default the last backbone output); for a ``.yaml`` (Detectron2) config the FPN maps of
``EQUI.FPN_LEVELS``. Training images are the config's training split loaded as at test
time (no augmentation of the model's own), so features match those seen by the defense.
A seeded 20% of them is held out for the printed metric.

Example::

    python tools/train_ssl_head.py configs/demo/deeplabv3_r18c16-d8_1xb8-3k_synthetic-128x128.py \\
        checkpoints/deeplabv3_r18c16-d8_synthetic-128x128.pth --kind rotation \\
        --out checkpoints/ssl/deeplabv3_r18c16-d8_synthetic-128x128_rotation.pth
    python tools/train_ssl_head.py configs/demo/mask_rcnn_R18_FPN_synthetic-128x128.yaml \
        checkpoints/mask_rcnn_R18_FPN_synthetic-128x128.pth --kind contrastive \
        --out checkpoints/ssl/mask_rcnn_R18_FPN_synthetic-128x128_contrastive.pth \
        --opts EQUI.FPN_LEVELS "['p2','p3','p4']"

The head must be trained on the feature view it is used with (same layer / FPN levels):
a mismatch is refused at the first defended image, naming both.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from equi_ext.core.optimizer import frozen_model
from equi_ext.core.ssl import KINDS, save_head, train_head


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="MMSeg .py or Detectron2 .yaml config")
    parser.add_argument("checkpoint", help="the model's weights")
    parser.add_argument("--kind", required=True, choices=KINDS)
    parser.add_argument("--out", required=True, help="where to write the head (.pth)")
    parser.add_argument("--iters", type=int, default=1000, help="head optimiser steps (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-root", help="training data root (replaces the config's; Detectron2: "
                        "EQUI.SYNTHETIC_ROOT)")
    parser.add_argument("--num-images", type=int, help="use only the first N training images")
    parser.add_argument("--opts", nargs="+", default=[], help="Detectron2 KEY VALUE overrides")
    parser.add_argument("--work-dir", default="work_dirs/train_ssl_head", help="MMEngine's log folder")
    return parser.parse_args(argv)


def mmseg_view(args):
    """(model, feature_fn, clean RGB pixel images, feature spec) of an MMSeg config."""
    from mmengine.config import Config
    from mmengine.dataset import pseudo_collate
    from mmengine.runner import Runner
    from mmseg.registry import DATASETS

    import equi_ext.mmseg as equi_mmseg

    cfg = Config.fromfile(args.config)
    cfg.work_dir = args.work_dir
    cfg.default_hooks.pop("visualization", None)
    cfg.log_level = "WARNING"
    cfg.load_from = None
    runner = Runner.from_cfg(cfg)
    runner.load_checkpoint(args.checkpoint, map_location="cpu", strict=True)
    model = runner.model.eval()
    dataset_cfg = cfg.train_dataloader.dataset.copy()
    dataset_cfg.pipeline = cfg.test_pipeline  # the images as the defense sees them: test-time resize only
    if args.data_root:
        dataset_cfg.data_root = args.data_root
    if args.num_images:
        dataset_cfg.indices = args.num_images
    dataset = DATASETS.build(dataset_cfg)
    rt = equi_mmseg.runtime(model)
    images = []
    with torch.no_grad():
        for i in range(len(dataset)):
            data = model.data_preprocessor(pseudo_collate([dataset[i]]), False)
            left, right, top, bottom = data["data_samples"][0].metainfo.get("padding_size", (0, 0, 0, 0))
            h, w = data["inputs"].shape[-2:]
            images.append(rt.pixels.to_pixels(data["inputs"][:, :, top:h - bottom, left:w - right])[0])
    layer = cfg.model.test_cfg.get("feature_layer", "backbone")
    return model, rt.features, images, f"mmseg:{Path(args.config).name}:feature_layer={layer}"


def detectron2_view(args):
    """(model, feature_fn, clean RGB pixel images, feature spec) of a Detectron2 config."""
    from detectron2.data import DatasetCatalog, DatasetMapper
    from detectron2.modeling import build_model

    from equi_ext.detectron2 import load_config, register_from_cfg
    from equi_ext.detectron2.evaluation import load_weights
    from equi_ext.detectron2.modeling.objective import MaskRCNNObjective

    cfg = load_config(args.config, args.opts)
    cfg.MODEL.META_ARCHITECTURE = "EquiGeneralizedRCNN"  # its differentiable image_list is the defense's
    cfg.EQUI.DEFENSE, cfg.EQUI.ATTACK = "none", ""
    if args.data_root:
        cfg.EQUI.SYNTHETIC_ROOT = args.data_root
    register_from_cfg(cfg)
    if not cfg.DATASETS.TRAIN:
        raise ValueError("DATASETS.TRAIN is empty: name the training split")
    model = build_model(cfg)
    load_weights(model, args.checkpoint)
    model.eval()
    records = DatasetCatalog.get(cfg.DATASETS.TRAIN[0])[:args.num_images]
    mapper = DatasetMapper(cfg, is_train=False)  # test-time resize, the defense's input
    images = [model.to_pixels(mapper(record)["image"]) for record in records]
    features = MaskRCNNObjective(model, model.image_list, cfg.EQUI.FPN_LEVELS)
    return model, features, images, f"detectron2:{Path(args.config).name}:fpn={features.levels}"


def main(argv=None) -> dict:
    args = parse_args(argv)
    if not Path(args.config).is_file():
        raise SystemExit(f"error: config file {args.config!r} does not exist")
    if not Path(args.checkpoint).is_file():
        raise SystemExit(f"error: checkpoint {args.checkpoint!r} does not exist")
    if args.num_images is not None and args.num_images < 4:
        raise SystemExit(f"error: --num-images must be >= 4 (train and held-out images); got {args.num_images}")
    if not args.config.endswith((".py", ".yaml", ".yml")):
        raise SystemExit(f"error: config must be an MMSeg .py or a Detectron2 .yaml file; got {args.config!r}")
    view = mmseg_view if args.config.endswith(".py") else detectron2_view
    try:
        model, features, images, spec = view(args)
        with frozen_model(model):
            head, metrics = train_head(args.kind, features, images, iters=args.iters, seed=args.seed,
                                       feature_spec=spec)
    except (ValueError, FileNotFoundError, KeyError) as err:
        raise SystemExit(f"error: {err}") from None
    metrics.update(kind=args.kind, iters=args.iters, seed=args.seed, feature_spec=spec)
    save_head(head, args.out, metrics)
    print(f"{args.kind} head for {spec}: {metrics['metric']} {metrics['value']:.3f} (chance {metrics['chance']:.3f}) "
          f"on {metrics['held_out_images']} held-out images; trained on {metrics['train_images']}; wrote {args.out}")
    return metrics


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    main()
