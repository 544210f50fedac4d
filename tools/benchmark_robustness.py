#!/usr/bin/env python
"""Table-2-style robustness benchmark of a demo model: attacks × defenses × seeds.

Rows are the attacks of ``--attacks`` and the worst case over every attack row, the honest robust
number; columns are the defenses of ``--defenses`` (``--help`` lists both). Transfer attacks are
computed on the undefended model and then defended (the paper's Table 2); adaptive, BPDA, EOT, APGD
and SEA attack through the defense (``equi_ext.evaluation.robustness`` says which is which). Each cell
runs once per seed (the seed of the attack's random start and of the defense's noise and transforms)
and the tables show mean ± std over seeds.

The default model is the demo DeepLabV3 (mIoU from MMSeg's IoUMetric); ``--framework detectron2``
(or ``--detectron2``) benchmarks the demo Mask R-CNN instead (COCO mask AP from Detectron2's
COCOEvaluator; the per-image quality is each image's own mask AP; attacks that need dense logits —
CW, Houdini, SEA — do not apply and the page says so). ``--checkpoint`` takes other weights of the
same architecture.

Every image's result is written atomically under ``WORK_DIR/cells`` as it finishes;
``--resume`` skips every image already written, so a killed run continues where it stopped
and ends with the same numbers. Writes ``robustness.{md,csv,json}`` into the work dir.

Example::

    python tools/benchmark_robustness.py --num-images 8 --seeds 0,1,2
    python tools/benchmark_robustness.py --detectron2 --num-images 6 --seeds 0 --work-dir work_dirs/robustness_d2
"""

from __future__ import annotations

import argparse

from equi_ext.evaluation.demo import DATA, WORKSPACE
from equi_ext.evaluation.robustness import ATTACK_NAMES, DEFENSE_NAMES, REPORT, benchmark_robustness
from equi_ext.tooling import add_framework_option, add_render_option, command_line, measure_or_render, start_tool


def names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=8, help="first N val images (default: %(default)s)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated run seeds (default: %(default)s)")
    add_framework_option(parser)
    parser.add_argument("--preset", default="fast",
                        help="MMSeg: budget of the optimised defenses (default: %(default)s); the Mask R-CNN "
                             "keeps its config's tuned settings")
    parser.add_argument("--defenses", default=",".join(DEFENSE_NAMES), help="columns (default: all: %(default)s)")
    parser.add_argument("--attacks", default=",".join(ATTACK_NAMES), help="rows (default: all: %(default)s)")
    parser.add_argument("--steps", type=int, default=10, help="attack steps (default: %(default)s)")
    parser.add_argument("--bpda-steps", type=int, default=10, help="BPDA / EOT steps (default: %(default)s)")
    parser.add_argument("--eot-samples", type=int, default=2)
    parser.add_argument("--lambdas", default="0.1,1,10", help="adaptive λ_e sweep (default: %(default)s)")
    parser.add_argument("--data-root", default=str(DATA), help="val images (default: the demo benchmark)")
    parser.add_argument("--checkpoint", help="model weights (default: the demo model's)")
    parser.add_argument("--work-dir", default=str(WORKSPACE / "work_dirs/robustness"))
    parser.add_argument("--resume", action="store_true", help="skip images already recorded in the work dir")
    add_render_option(parser)
    args = parser.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
        lambdas = [float(v) for v in args.lambdas.split(",")]
    except ValueError as err:
        raise SystemExit(f"error: --seeds takes integers and --lambdas numbers, comma-separated ({err})") from None
    return measure_or_render(lambda: benchmark_robustness(
        framework=args.framework, defense_names=names(args.defenses), attack_names=names(args.attacks),
        seeds=seeds, num_images=args.num_images, steps=args.steps, bpda_steps=args.bpda_steps,
        eot_samples=args.eot_samples, lambdas=lambdas, data_root=args.data_root, checkpoint=args.checkpoint,
        preset=args.preset, work_dir=args.work_dir, resume=args.resume,
        command=command_line("benchmark_robustness.py", argv)), REPORT, args.render)


if __name__ == "__main__":
    start_tool()
    main()
