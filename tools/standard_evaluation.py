#!/usr/bin/env python
"""The standard robustness evaluation of a test-time defense (Croce et al. 2022) on the demo model, in one command.

Clean; SEA (APGD with three losses; on the Mask R-CNN APGD on its training losses) on the undefended model,
transferred to the defended one, through the defense (BPDA) and with EOT; PGD, BPDA-PGD and the adaptive
attack; the per-image worst case (and, for mIoU, the greedy dataset-level one); a convergence check that
doubles the through-defense attack's iterations until the worst case moves by < 0.5 point; the security
curve (metric vs ε, vanilla and defended) as a table and a PNG; the time of each part. The logic and the
report are described in ``equi_ext.evaluation.standard``.

Example::

    python tools/standard_evaluation.py --num-images 8 --steps 10
    python tools/standard_evaluation.py --detectron2 --num-images 4 --steps 5
    python tools/standard_evaluation.py --render docs/benchmarks/standard_evaluation/deeplabv3/standard_evaluation.json
"""

from __future__ import annotations

import argparse

from equi_ext.evaluation.demo import DATA, EPS, WORKSPACE
from equi_ext.evaluation.standard import EPSILONS, REPORT, standard_evaluation
from equi_ext.tooling import add_framework_option, add_render_option, command_line, measure_or_render, start_tool


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_framework_option(parser)
    parser.add_argument("--num-images", type=int, default=8, help="first N val images (default: %(default)s)")
    parser.add_argument("--eps", type=float, default=EPS, help="L∞ budget in pixel levels (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=10,
                        help="iterations of every attack (SEA: per loss) before doubling (default: %(default)s)")
    parser.add_argument("--eot-samples", type=int, default=2, help="defense draws per EOT gradient")
    parser.add_argument("--max-doublings", type=int, default=3, help="convergence check (default: %(default)s)")
    parser.add_argument("--epsilons", default=",".join(f"{e:g}" for e in EPSILONS),
                        help="security curve's ε levels (default: %(default)s)")
    parser.add_argument("--lambda-e", type=float, default=1.0, help="adaptive attack's weight")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", default="fast", help="MMSeg: defense preset (default: %(default)s); the "
                        "Mask R-CNN keeps its config's tuned settings")
    parser.add_argument("--data-root", default=str(DATA), help="val images (default: the demo benchmark)")
    parser.add_argument("--checkpoint", default=None, help="weights (default: the demo model's)")
    parser.add_argument("--work-dir", default=str(WORKSPACE / "work_dirs/standard_evaluation"))
    parser.add_argument("--resume", action="store_true", help="reuse the per-image records of finished images")
    add_render_option(parser)
    args = parser.parse_args(argv)

    def measure() -> dict:
        try:
            epsilons = tuple(float(e) for e in args.epsilons.split(","))
        except ValueError:
            raise SystemExit(f"error: --epsilons takes numbers separated by commas; got {args.epsilons!r}") from None
        return standard_evaluation(
            framework=args.framework, num_images=args.num_images, eps=args.eps, steps=args.steps,
            eot_samples=args.eot_samples, max_doublings=args.max_doublings, epsilons=epsilons,
            lambda_e=args.lambda_e, seed=args.seed, preset=args.preset, data_root=args.data_root,
            checkpoint=args.checkpoint, work_dir=args.work_dir, resume=args.resume,
            command=command_line("standard_evaluation.py", argv))

    return measure_or_render(measure, REPORT, args.render)


if __name__ == "__main__":
    start_tool()
    main()
