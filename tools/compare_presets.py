#!/usr/bin/env python
"""Do the defense's presets hold on models they were not tuned on? A model × preset table.

For each zoo model of one framework (segmenters, the default: the demo DeepLabV3 at 128 px, a UNet-FCN at 64 px,
a Fast-SCNN at 256 px; or Mask R-CNNs: the demo one and an R34 one; configs under configs/zoo, trained by
tools/train.py / tools/train_net.py) on its tuning split: vanilla and each setting clean, under PGD-20 (transfer), BPDA-10 and SEA-10 (Mask R-CNN: APGD-10) through
the defense, the per-image worst case, the share of the attacks' damage the defense recovers, and the cost over
the stock prediction at batch 1 and --batch (``equi_ext.evaluation.presets.compare_presets``). Examples::

    python tools/compare_presets.py --models unet-64 --num-images 16
    python tools/compare_presets.py --models mask-rcnn-r18-128,mask-rcnn-r34-128 --settings default,d2-demo \
        --work-dir work_dirs/presets_d2
"""

from __future__ import annotations

import argparse

from equi_ext.evaluation.demo import WORKSPACE
from equi_ext.evaluation.presets import ATTACKS, DEFAULT_ATTACKS, REPORT, SEGMENTERS, SETTINGS, ZOO, compare_presets
from equi_ext.tooling import add_render_option, command_line, measure_or_render, start_tool


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(SEGMENTERS),
                        help=f"zoo models of one framework, of {', '.join(ZOO)} (default: %(default)s)")
    parser.add_argument("--settings", default="fast,default,reference",
                        help=f"defense settings, of {', '.join(SETTINGS)} (default: %(default)s)")
    parser.add_argument("--attacks", help=f"attacks of the worst case, of {', '.join(ATTACKS)} (default: "
                        + "; ".join(f"{fw}: {','.join(names)}" for fw, names in DEFAULT_ATTACKS.items()) + ")")
    parser.add_argument("--num-images", type=int, default=16, help="first N tuning images (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=16, help="the larger batch of the cost (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=1, help="timed calls after a warm-up (default: %(default)s)")
    parser.add_argument("--resume", action="store_true", help="keep the cells' per-image records already written")
    parser.add_argument("--work-dir", default=str(WORKSPACE / "work_dirs/presets"))
    add_render_option(parser)
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    return measure_or_render(lambda: compare_presets(
        models=args.models.split(","), settings=args.settings.split(","),
        attacks=args.attacks.split(",") if args.attacks else None, num_images=args.num_images,
        batch=args.batch, repeats=args.repeats, work_dir=args.work_dir, resume=args.resume,
        command=command_line("compare_presets.py", argv)), REPORT, args.render)


if __name__ == "__main__":
    start_tool()
    main()
