#!/usr/bin/env python
"""Speed and memory of defended inference against a vanilla forward, as ratios, in one process.

For each model — the MMSeg demo DeepLabV3 and the Detectron2 demo Mask R-CNN (committed
weights, synthetic val images) and the real-size models of ``--real-models`` (MMSeg's DeepLabV3
R50-D8 at 512×512, Detectron2's Mask R-CNN R50-FPN at 800×1333; random weights: only the time
matters) — it times, after a warm-up, a
vanilla forward, defended inference for each preset, detection-only scoring and PGD-10,
at batch 1 and batch N (for the MMSeg demo also detect-then-defend's whole prediction of clean
val images, threshold from the tuning split), and reports median/min/max seconds per image, the ratio to the
vanilla forward of the same batch size, and the peak RSS above the process's RSS before
any model was built (``/proc/self/status`` VmHWM, reset per measurement). The real-size
models are timed for one defense step (per-step cost × T; whole runs only for presets that
sample transforms per step), with the transformed copies batched and chunked (one copy's
graph at a time); ``--cityscapes-size`` does the same for the demo model on 1024×2048 images.
On a GPU (``--device cuda``, the default when there is one) each timed call waits for the GPU
to finish, and memory is CUDA's peak allocated memory instead of the process's RSS.

Example::

    python tools/benchmark_speed.py --batch 8 --repeats 3
"""

from __future__ import annotations

import argparse

from equi_ext.core.defense import PRESETS
from equi_ext.evaluation.demo import WORKSPACE
from equi_ext.evaluation.speed import REPORT, benchmark_speed
from equi_ext.tooling import add_render_option, command_line, measure_or_render, start_tool


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8, help="the batch-N size (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--presets", default=",".join(p for p in ("default", "fast") if p in PRESETS),
                        help="defense presets to time (default: %(default)s)")
    parser.add_argument("--attack-steps", type=int, default=10)
    parser.add_argument("--real-models", default="mmseg",
                        help="real-size models timed per defense step, random weights: mmseg (DeepLabV3 R50-D8, "
                             "512×512), detectron2 (Mask R-CNN R50-FPN, 800×1333); empty: none (default: %(default)s)")
    parser.add_argument("--skip-real", action="store_true", help="time no real-size model (as --real-models '')")
    parser.add_argument("--compile", action="store_true",
                        help="also time torch.compile of the feature function, MMSeg demo only (minutes to compile)")
    parser.add_argument("--detector-transforms", default="hflip",
                        help="score transforms of detect-then-defend on clean traffic, MMSeg demo only; empty: "
                             "skip it (default: %(default)s)")
    parser.add_argument("--detector-percentile", type=float, default=5.0,
                        help="its threshold: this percentile of the tuning split's clean scores (default: %(default)s)")
    parser.add_argument("--clean-traffic-images", type=int, default=16,
                        help="clean val images it predicts at batch 1 and --batch (default: %(default)s)")
    parser.add_argument("--cityscapes-size", action="store_true",
                        help="also time one defense step of the MMSeg demo model on 1024×2048 images")
    parser.add_argument("--models", default="mmseg,detectron2", help="demo models to time (default: %(default)s)")
    parser.add_argument("--device", default=None,
                        help="cpu, cuda or cuda:N (default: the GPU when torch finds one, else the CPU)")
    parser.add_argument("--work-dir", default=str(WORKSPACE / "work_dirs/benchmark_speed"))
    add_render_option(parser)
    return parser.parse_args(argv)


def main(argv=None) -> list[dict] | dict:
    args = parse_args(argv)
    return measure_or_render(lambda: benchmark_speed(
        batch=args.batch, repeats=args.repeats, presets=args.presets.split(","), attack_steps=args.attack_steps,
        real_models=[] if args.skip_real or not args.real_models else args.real_models.split(","),
        compile_features=args.compile,
        detector_transforms=args.detector_transforms.split(",") if args.detector_transforms else None,
        detector_percentile=args.detector_percentile, clean_traffic_images=args.clean_traffic_images,
        cityscapes_size=args.cityscapes_size,
        models=args.models.split(","), device=args.device, work_dir=args.work_dir, command=command_line("benchmark_speed.py", argv)),
        REPORT, args.render)


if __name__ == "__main__":
    start_tool()
    main()
