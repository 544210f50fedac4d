#!/usr/bin/env python
"""Visual report (paper Figures 2 and 4): where an attack breaks equivariance and the defense restores it.

For the first N val images of the demo benchmark, one row of panels each:
input | ground truth | clean prediction | g⁻¹∘C∘F∘g(x) for each transform of the defense |
PGD prediction | restored prediction | equivariance map of the clean, attacked and restored input.
The map at a feature position is the mean over transforms of cos(g⁻¹F(g x), F(x)) on the overlap
(``equi_ext.core.scores.equivariance_map``); titles carry each prediction's mIoU on that image
and each map's equivariance score (paper Eq. 2 / K, the score ``EquivarianceDefense.score`` gives).

Writes into the work dir: ``visual_report.png`` (the grid), ``index.html`` (self-contained: one
embedded PNG row per image, with a caption and a table naming every panel),
``visual_report.json`` (the numbers) and ``visual_report.md`` (a summary table).

Example::

    python tools/visual_report.py --num-images 4 --steps 20 --preset fast --seed 0
"""

from __future__ import annotations

import argparse

from equi_ext.core.defense import PRESETS
from equi_ext.evaluation.demo import ATTACK_STEPS, CHECKPOINT, DATA, EPS, WORKSPACE
from equi_ext.evaluation.visual_report import visual_report
from equi_ext.tooling import command_line, measure_or_render, start_tool


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=4, help="first N val images (default: %(default)s)")
    parser.add_argument("--work-dir", default=str(WORKSPACE / "work_dirs/visual_report"))
    parser.add_argument("--data-root", default=str(DATA),
                        help="synthetic benchmark root (default: %(default)s, generated if missing)")
    parser.add_argument("--checkpoint", default=str(CHECKPOINT))
    parser.add_argument("--eps", type=float, default=EPS, help="PGD budget in pixel levels (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=ATTACK_STEPS, help="PGD steps (default: %(default)s)")
    parser.add_argument("--preset", default="fast", choices=sorted(PRESETS),
                        help="equivariance defense preset (default: %(default)s)")
    parser.add_argument("--transforms", nargs="+", metavar="SPEC",
                        help="the defense's transforms instead of the preset's: a set name (flip_resize_rotate, paper, "
                             "flip_resize) or specs such as hflip resize:0.5 rotate:10 (one panel each)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the attack's start and the defense")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    return measure_or_render(lambda: visual_report(
        num_images=args.num_images, work_dir=args.work_dir, data_root=args.data_root, checkpoint=args.checkpoint,
        eps=args.eps, steps=args.steps, preset=args.preset, transforms=args.transforms, seed=args.seed,
        command=command_line("visual_report.py", argv)))


if __name__ == "__main__":
    start_tool()
    main()
