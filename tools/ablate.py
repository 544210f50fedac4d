#!/usr/bin/env python
"""Ablations of the equivariance defense on the demo model (paper Tables 6, 7, 12 and Figure 3).

Each command evaluates, with MMSeg's test loop and ``IoUMetric`` on the first N images of the
reported val split (data/synthetic_shapes), the defense at every point of one grid, clean and
under PGD at ε = 4, plus the vanilla model once for reference. Every point starts from the
``--preset`` settings and changes only the ablated knob:

  transforms   (Table 6)  only resizes / flip / rotations / colour jitter, flip + resize, all:
                          subsets of the paper's K = 8 set, every transform used at every step
  eps_v        (Table 7)  ε_v, with the step size scaled to keep the preset's η / ε_v ratio
  optimizer    (Table 12) SGLD (annealed noise) vs plain SGD (no noise)
  constraints  (Figure 3) the first K transforms of the paper's set in a fixed order, all K per step

Writes ``ablation_<name>.{md,json,csv,png}`` into ``--work-dir``. The table also reports how
far the defense moved the images (max and mean |x' − x|, pixel levels; x is the defense's input).

Examples::

    python tools/ablate.py transforms
    python tools/ablate.py eps_v --values 2,8 --num-images 2 --attack-steps 1
"""

from __future__ import annotations

import argparse

from equi_ext.core.defense import PRESETS
from equi_ext.evaluation.ablations import ABLATIONS, REPORT, run_ablation
from equi_ext.evaluation.demo import DATA, WORKSPACE
from equi_ext.tooling import add_render_option, command_line, measure_or_render, start_tool


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ablation", nargs="?", choices=list(ABLATIONS))
    parser.add_argument("--values", help="comma-separated grid values (defaults: "
                        + "; ".join(f"{k} {','.join(map(str, a.values))}" for k, a in ABLATIONS.items()) + ")")
    parser.add_argument("--num-images", type=int, default=8, help="first N val images (default: %(default)s)")
    parser.add_argument("--preset", default="fast", choices=list(PRESETS),
                        help="base defense settings (default: %(default)s)")
    parser.add_argument("--attack-steps", type=int, default=20, help="PGD steps (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="defense and attack seed (default: %(default)s)")
    parser.add_argument("--data-root", default=str(DATA), help="val images (default: the demo benchmark)")
    parser.add_argument("--work-dir", default=str(WORKSPACE / "work_dirs/ablate"))
    add_render_option(parser)
    args = parser.parse_args(argv)
    if not args.ablation and not args.render:
        parser.error(f"name an ablation ({', '.join(ABLATIONS)}) or --render a result")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    return measure_or_render(lambda: run_ablation(
        ablation=args.ablation, values=args.values.split(",") if args.values is not None else None,
        num_images=args.num_images, preset=args.preset, attack_steps=args.attack_steps, seed=args.seed,
        data_root=args.data_root, work_dir=args.work_dir, command=command_line("ablate.py", argv)),
        REPORT, args.render)


if __name__ == "__main__":
    start_tool()
    main()
