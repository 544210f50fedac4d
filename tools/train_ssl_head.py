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

from equi_ext.core.ssl import KINDS
from equi_ext.evaluation.ssl_heads import train_ssl_head
from equi_ext.tooling import start_tool


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


def main(argv=None) -> dict:
    args = parse_args(argv)
    try:
        return train_ssl_head(config=args.config, checkpoint=args.checkpoint, kind=args.kind, out=args.out,
                              iters=args.iters, seed=args.seed, data_root=args.data_root, num_images=args.num_images,
                              opts=args.opts, work_dir=args.work_dir)
    except (ValueError, FileNotFoundError, KeyError) as err:
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    start_tool()
    main()
