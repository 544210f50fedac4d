#!/usr/bin/env python
"""SEA against PGD, SegPGD and CosPGD at equal cost on the undefended demo DeepLabV3.

``--split tune`` chooses each baseline's fixed step on the tuning split (seed 1); ``--split val`` measures
all on the reported split with the steps the tuning run chose (``--tuned``, default: its work dir's JSON;
``equi_ext.evaluation.compare_attacks``).

Examples::

    python tools/compare_attacks.py --split tune --num-images 8 --steps 30 --eps 2
    python tools/compare_attacks.py --split val --num-images 8 --steps 30 --eps 2
"""

from __future__ import annotations

import argparse
from pathlib import Path

from equi_ext.evaluation.compare_attacks import REPORT, compare_attacks, training_class_weights, tuned_steps
from equi_ext.evaluation.demo import WORKSPACE
from equi_ext.tooling import add_render_option, command_line, measure_or_render, start_tool


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", choices=("tune", "val"), default="tune")
    parser.add_argument("--num-images", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10, help="SEA's APGD iterations per loss (default: 10)")
    parser.add_argument("--eps", type=float, default=4.0, help="L∞ budget in pixel levels (default: 4)")
    parser.add_argument("--checkpoint", help="weights of the demo DeepLabV3's architecture (default: the demo "
                                             "model's), e.g. the adversarially trained one")
    parser.add_argument("--work-dir", default=None,
                        help="default: work_dirs/compare_attacks/[CHECKPOINT-STEM/]SPLIT-epsE-stepsN")
    parser.add_argument("--tuned", help="--split val: the tuning run's compare_attacks.json")
    parser.add_argument("--sea-weights", choices=("train", "per-image"), default="train",
                        help="class weights of SEA's balanced cross-entropy: inverse pixel frequencies of the "
                             "training split, as SEA's authors (default), or of each attacked image")
    add_render_option(parser)
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    runs = WORKSPACE / "work_dirs/compare_attacks"
    if args.checkpoint:
        runs = runs / Path(args.checkpoint).stem
    work_dir = Path(args.work_dir or runs / f"{args.split}-eps{args.eps:g}-steps{args.steps}")

    def measure() -> dict:
        steps = None
        if args.split == "val":
            tuned = args.tuned or runs / f"tune-eps{args.eps:g}-steps{args.steps}/compare_attacks.json"
            steps = tuned_steps(tuned, args.eps, args.steps)
        return compare_attacks(split=args.split, num_images=args.num_images, steps=args.steps, work_dir=work_dir,
                               eps=args.eps, step_sizes=steps, checkpoint=args.checkpoint,
                               sea_class_weights=training_class_weights() if args.sea_weights == "train" else None,
                               command=command_line("compare_attacks.py", argv))

    return measure_or_render(measure, REPORT, args.render)


if __name__ == "__main__":
    start_tool()
    main()
