#!/usr/bin/env python
"""Sweep the adaptive attack's λ_e (paper Eq. 6) against the defended demo model.

Runs on the tuning split (seed 1), so the λ_e used for reported numbers is not picked on
them. Each cell is one MMSeg IoUMetric run; lower mIoU = stronger attack.

Example::

    python tools/sweep_lambda.py --num-images 16 --lambdas 0,0.1,1,10,100,1000
"""

from __future__ import annotations

import argparse
from pathlib import Path

from equi_ext.evaluation.demo import WORKSPACE, build_demo_runner, ensure_tune_data
from equi_ext.tooling import quiet_known_warnings


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=16)
    parser.add_argument("--lambdas", default="0,0.1,1,10,100,1000")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--work-dir", default=str(WORKSPACE / "work_dirs/sweep_lambda"))
    args = parser.parse_args(argv)

    from equi_ext.mmseg.evaluation import evaluate_grid, grid_table
    from equi_ext.reporting import write_report

    lambdas = [float(v) for v in args.lambdas.split(",")]
    runner = build_demo_runner(ensure_tune_data(), args.num_images, Path(args.work_dir))
    attacks = {f"adaptive λ_e={lam:g}": dict(type="adaptive", eps=4, steps=args.steps, lambda_e=lam)
               for lam in lambdas}
    rows = evaluate_grid(runner, {"vanilla": None, "equivariance": dict(type="equi")}, attacks)
    text = (f"Tuning split (seed 1), first {args.num_images} images, adaptive attack with {args.steps} steps\n\n"
            + grid_table(rows) + "\n\nmean equivariance score of the attacked (vanilla) / defended images\n\n"
            + grid_table(rows, "score", "{:.3f}") + "\n")
    write_report(args.work_dir, "sweep_lambda", text, rows)
    return rows


if __name__ == "__main__":
    quiet_known_warnings()
    main()
