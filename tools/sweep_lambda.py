#!/usr/bin/env python
"""Sweep the adaptive attack's λ_e (paper Eq. 6) against the defended demo model.

Runs on the tuning split (seed 1), so the λ_e used for reported numbers is not picked on
them. Each cell is one MMSeg IoUMetric run; lower mIoU = stronger attack
(``equi_ext.evaluation.tuning.sweep_adaptive_lambda``).

Example::

    python tools/sweep_lambda.py --num-images 16 --lambdas 0,0.1,1,10,100,1000
"""

from __future__ import annotations

import argparse

from equi_ext.evaluation.demo import WORKSPACE
from equi_ext.evaluation.tuning import SWEEP_REPORT, sweep_adaptive_lambda
from equi_ext.tooling import add_render_option, command_line, measure_or_render, start_tool


def main(argv=None) -> list[dict] | dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=16)
    parser.add_argument("--lambdas", default="0,0.1,1,10,100,1000")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--work-dir", default=str(WORKSPACE / "work_dirs/sweep_lambda"))
    add_render_option(parser)
    args = parser.parse_args(argv)

    def measure() -> list[dict]:
        try:
            lambdas = [float(v) for v in args.lambdas.split(",")]
        except ValueError:
            raise SystemExit(f"error: --lambdas takes numbers separated by commas; got {args.lambdas!r}") from None
        return sweep_adaptive_lambda(num_images=args.num_images, lambdas=lambdas, steps=args.steps,
                                     work_dir=args.work_dir, command=command_line("sweep_lambda.py", argv))

    return measure_or_render(measure, SWEEP_REPORT, args.render)


if __name__ == "__main__":
    start_tool()
    main()
