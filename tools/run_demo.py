#!/usr/bin/env python
"""The embedded default job: synthetic data → demo DeepLabV3 → attacks → defenses → MMSeg mIoU.

Generates the synthetic benchmark if missing, uses the committed demo checkpoint (``--retrain``:
trains it with tools/train.py), evaluates vanilla vs equivariance under clean, PGD-20 and BPDA-10
(``--full``: the paper's Table 2 grid with invariance and the adaptive attack) and the Table 5 scores on
the first N val images with MMSeg's IoUMetric, and writes WORK_DIR/demo_results.{md,json}
(``equi_ext.evaluation.demo.run_demo``). ``--spread`` gathers such results from several machines or settings
into one table with each cell's range (``demo_spread``).
"""

from __future__ import annotations

import argparse

from equi_ext.evaluation.demo import REPORT, WORKSPACE, demo_spread, run_demo
from equi_ext.tooling import add_render_option, command_line, measure_or_render, start_tool


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=16, help="first N val images (default: %(default)s)")
    parser.add_argument("--work-dir", default=str(WORKSPACE / "work_dirs/demo"))
    parser.add_argument("--retrain", action="store_true", help="train the demo model instead of using the checkpoint")
    parser.add_argument("--full", action="store_true", help="also the invariance column and the adaptive attack")
    parser.add_argument("--batch-size", type=int, default=8, help="images per batch (default: %(default)s); seeds "
                        "are per image, only last bits change, which moves defended cells as a change of CPU does")
    parser.add_argument("--spread", nargs="+", metavar="RESULT_JSON",
                        help="measure nothing: gather results of this tool from other CPUs, kernel sets, thread "
                             "counts or batch sizes into WORK_DIR/demo_spread.{md,json} (each cell per run, range)")
    add_render_option(parser)
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    command = command_line("run_demo.py", argv)
    if args.spread:
        return measure_or_render(lambda: demo_spread(args.spread, args.work_dir, command=command))
    return measure_or_render(lambda: run_demo(args.num_images, args.work_dir, args.retrain, full=args.full,
                                              batch_size=args.batch_size, command=command), REPORT, args.render)


if __name__ == "__main__":
    start_tool()
    main()
