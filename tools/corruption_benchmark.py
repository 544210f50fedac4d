#!/usr/bin/env python
"""Corruption robustness (P, mPC, rPC) of the demo DeepLabV3 or Mask R-CNN, vanilla and defended.

For the 15 common corruptions (``imagecorruptions``) at severities 1–5, or the chosen subset, each image is
corrupted as it is loaded (seeded by its file name) and evaluated by the framework's own metric (MMSeg's
``IoUMetric``, Detectron2's ``COCOEvaluator``) with no defense, the equivariance defense and detect-then-defend
(threshold: the ``--clean-percentile`` of clean scores on the tuning split). P = clean, mPC = mean over corruptions
and severities, rPC = mPC / P (Michaelis et al. 2019). Writes ``corruption_<framework>.{md,json,csv,png}``.

Example::

    python tools/corruption_benchmark.py --num-images 8 --severities 1,3,5
    python tools/corruption_benchmark.py --detectron2 --num-images 4 --corruptions fog,gaussian_noise
"""

from __future__ import annotations

import argparse

from equi_ext.data.corruptions import CORRUPTIONS, SEVERITIES
from equi_ext.evaluation.corruption import REPORT, corruption_benchmark
from equi_ext.evaluation.demo import DATA, WORKSPACE
from equi_ext.tooling import add_framework_option, add_render_option, command_line, measure_or_render, start_tool


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_framework_option(parser)
    parser.add_argument("--corruptions", default=",".join(CORRUPTIONS), help="comma-separated (default: all 15)")
    parser.add_argument("--severities", default=",".join(map(str, SEVERITIES)), help="default: %(default)s")
    parser.add_argument("--num-images", type=int, default=8, help="first N val images (default: %(default)s)")
    parser.add_argument("--num-tune-images", type=int, default=16,
                        help="clean tuning images behind detect-then-defend's threshold (default: %(default)s)")
    parser.add_argument("--clean-percentile", type=float, default=5.0,
                        help="threshold = this percentile of their scores (default: %(default)s)")
    parser.add_argument("--preset", default="fast", help="MMSeg: defense preset (default: %(default)s); the Mask "
                        "R-CNN keeps its config's tuned settings")
    parser.add_argument("--data-root", default=str(DATA), help="val images (default: the demo benchmark)")
    parser.add_argument("--tune-root", help="tuning images (default: the seed-1 tuning split)")
    parser.add_argument("--checkpoint", help="weights (default: the demo model's)")
    parser.add_argument("--work-dir", default=str(WORKSPACE / "work_dirs/corruption"))
    parser.add_argument("--resume", action="store_true", help="reuse the per-image records of finished images")
    add_render_option(parser)
    args = parser.parse_args(argv)
    try:
        severities = [int(s) for s in args.severities.split(",")]
    except ValueError:
        raise SystemExit(f"error: --severities takes integers separated by commas; got {args.severities!r}") from None
    return measure_or_render(lambda: corruption_benchmark(
        framework=args.framework, corruptions=[c for c in args.corruptions.split(",") if c],
        severities=severities, num_images=args.num_images, num_tune_images=args.num_tune_images,
        clean_percentile=args.clean_percentile, data_root=args.data_root, tune_root=args.tune_root,
        checkpoint=args.checkpoint, preset=args.preset, work_dir=args.work_dir, resume=args.resume,
        command=command_line("corruption_benchmark.py", argv)), REPORT, args.render)


if __name__ == "__main__":
    start_tool()
    main()
