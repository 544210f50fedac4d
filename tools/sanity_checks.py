#!/usr/bin/env python
"""Evaluation-honesty report for the defended demo model (Athalye et al. 2018, Carlini et al.
2019, Croce et al. 2022): is the defense's robustness real or an artefact of weak attacks?

Every attacked run goes through the framework's own evaluation against the defended model:
MMSeg's test loop with ``PerImageIoUMetric`` (IoUMetric's aggregation) for the demo DeepLabV3,
or, with ``--detectron2``, ``inference_on_dataset`` + ``COCOEvaluator`` (mask AP) for the demo
Mask R-CNN. Checks, each printed as pass/fail with its numbers (mIoU or mask AP points):

(a) an unbounded attack (SEA through the defense at ε = 255, or APGD on the training losses without dense
    logits, with the iterations APGD's curve in (g) ended with) leaves less than 1 % of the pixels right
    (mask AP below 1) on the vanilla model and on the defended one: an untargeted attack with the whole
    pixel range can make every pixel wrong, so one that cannot on the vanilla model is itself broken;
(b) more steps never make the defense look stronger: BPDA steps are doubled until mIoU moves by
    < 0.5 points (the convergence curve), and PGD random restarts are pooled per image;
(c) BPDA and EOT-BPDA through the defense are at least as strong as PGD transferred from the
    vanilla model (a white-box attack weaker than a transfer attack signals gradient masking);
(d) the adaptive attack's λ_e sweep is at least as strong as plain PGD;
(e) transfer from the vanilla model (PGD on the undefended model, then defended) is reported;
(f) white-box through the unrolled defense (``unrolled``: gradients through all T steps, sign()
    passed straight through) is no stronger than BPDA, i.e. BPDA's identity backward does not
    overstate robustness (the worst case includes it either way);
(g) APGD through the defense (exact forward, gradient at the purified image, a step size that adapts
    per image) converges: its iterations are doubled from --bpda-steps until mIoU moves by < 0.5;
    SEA (three losses, radii 2ε → 1.5ε → ε) runs with the last count where the model has dense logits.

The headline robust number is the per-image worst case over every ε-bounded run: for each image
the attacked input with the lowest per-image IoU (ties: highest loss), then dataset mIoU. COCO
AP ranks detections across images, so for mask AP each image's pick is searched to lower the
pooled AP (``equi_ext.detectron2.evaluation.worst_case``); it never exceeds the strongest run.

Each run's per-image records are kept under ``WORK_DIR/cells``; ``--resume`` reuses them.

Example::

    python tools/sanity_checks.py --num-images 8 --preset fast
    python tools/sanity_checks.py --detectron2 --num-images 6 --max-bpda-steps 40
"""

from __future__ import annotations

import argparse

from equi_ext.evaluation.demo import DATA, WORKSPACE
from equi_ext.evaluation.sanity_checks import REPORT, sanity_checks
from equi_ext.tooling import add_framework_option, add_render_option, command_line, measure_or_render, start_tool


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=8, help="first N val images (default: %(default)s)")
    add_framework_option(parser)
    parser.add_argument("--preset", default="fast", help="MMSeg: defense preset under test (default: %(default)s); "
                        "the Mask R-CNN keeps its config's tuned settings")
    parser.add_argument("--steps", type=int, default=10, help="PGD / adaptive / EOT steps (default: %(default)s)")
    parser.add_argument("--bpda-steps", type=int, default=5, help="first BPDA step count (default: %(default)s)")
    parser.add_argument("--max-bpda-steps", type=int, default=160,
                        help="stop doubling BPDA steps here even if not converged (default: %(default)s)")
    parser.add_argument("--restarts", type=int, default=2, help="PGD random restarts (default: %(default)s)")
    parser.add_argument("--lambdas", default="0.1,1,10", help="adaptive λ_e sweep (default: %(default)s)")
    parser.add_argument("--eot-samples", type=int, default=2)
    parser.add_argument("--data-root", default=str(DATA), help="val images (default: the demo benchmark)")
    parser.add_argument("--work-dir", default=str(WORKSPACE / "work_dirs/sanity"))
    parser.add_argument("--resume", action="store_true", help="reuse the per-image records of finished images")
    add_render_option(parser)
    args = parser.parse_args(argv)
    return measure_or_render(lambda: sanity_checks(
        framework=args.framework, num_images=args.num_images, preset=args.preset, steps=args.steps,
        bpda_steps=args.bpda_steps, max_bpda_steps=args.max_bpda_steps, restarts=args.restarts,
        lambdas=tuple(float(v) for v in args.lambdas.split(",")), eot_samples=args.eot_samples,
        data_root=args.data_root, work_dir=args.work_dir, resume=args.resume,
        command=command_line("sanity_checks.py", argv)), REPORT, args.render)


if __name__ == "__main__":
    start_tool()
    main()
