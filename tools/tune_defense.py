#!/usr/bin/env python
"""Choose the defense's default settings by measurement on a *tuning* split.

The tuning split is generated with another seed (1) than the benchmark (0), so the
settings are never chosen on the images the README reports. Each candidate is run by
MMSeg's test loop + IoUMetric on clean and PGD-attacked images; with ``--detectron2``,
the demo Mask R-CNN is run by ``COCOEvaluator`` (mask AP) instead.

Examples::

    python tools/tune_defense.py --num-images 16
    python tools/tune_defense.py --detectron2 --num-images 16
"""

from __future__ import annotations

import argparse

from equi_ext.evaluation.demo import WORKSPACE
from equi_ext.evaluation.tuning import CANDIDATES, D2_CANDIDATES, DEFAULT_CANDIDATES, REPORT, SPLITS, tune_defense
from equi_ext.tooling import add_framework_option, add_render_option, command_line, measure_or_render, start_tool


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=16)
    parser.add_argument("--work-dir", default=str(WORKSPACE / "work_dirs/tune"))
    parser.add_argument("--feature-layer", help="MMSeg only (default: backbone)")
    parser.add_argument("--candidates", help="comma-separated names from: " + ", ".join(CANDIDATES)
                        + f" (default: {','.join(DEFAULT_CANDIDATES)}); with --detectron2 from: "
                        + ", ".join(D2_CANDIDATES) + " (default: all)")
    add_framework_option(parser)
    parser.add_argument("--split", choices=SPLITS,
                        help="MMSeg only: 'val' re-runs chosen candidates on the reported split, to confirm a "
                             "choice made on 'tune' (default: tune)")
    add_render_option(parser)
    return parser.parse_args(argv)


def main(argv=None) -> list[dict] | dict:
    args = parse_args(argv)
    return measure_or_render(lambda: tune_defense(
        framework=args.framework, num_images=args.num_images, work_dir=args.work_dir,
        feature_layer=args.feature_layer, candidates=args.candidates.split(",") if args.candidates else None,
        split=args.split, command=command_line("tune_defense.py", argv)), REPORT, args.render)


if __name__ == "__main__":
    start_tool()
    main()
