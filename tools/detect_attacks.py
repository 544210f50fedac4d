#!/usr/bin/env python
"""Attack and corruption detection by equivariance, and detect-then-defend, on the demo model.

1. Scores per image (``model.test_cfg.score``): the equivariance cosine (the detector's
   transforms, ``--score-transforms``; low = suspicious), paper Eq. 16's output variance
   (high = suspicious), and the baselines' invariance cosine and rotation-prediction loss
   (``--rotation-head``). On the first N images of the reported split: AUROC
   (scikit-learn) of clean vs PGD and clean vs each of the 15 common corruptions
   (``imagecorruptions``, ``--severity``), ROC curves as PNG.
2. Threshold = the ``--clean-percentile`` percentile of the clean equivariance scores of
   the tuning split (seed 1). On the reported split: mIoU and seconds, clean and under
   PGD (--attack-steps), for vanilla / equivariance / the detector alone (flags nothing: its cost) /
   detect-then-defend, and the share flagged.
3. Detect-then-defend attacked: the adaptive attack (``--lambdas`` sweep) that also
   maximises the detector's score, with the share of attacked images that slip through
   (not flagged) and the resulting mIoU.

Example::

    python tools/detect_attacks.py --num-images 16 --score-transforms hflip
"""

from __future__ import annotations

import argparse

from equi_ext.core.validation import SettingsError
from equi_ext.data.corruptions import CORRUPTIONS
from equi_ext.evaluation.demo import DATA, SSL_HEADS, WORKSPACE
from equi_ext.evaluation.detection import REPORT, SCORE_KINDS, detect_attacks
from equi_ext.tooling import add_render_option, command_line, start_tool


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=16)
    parser.add_argument("--score-transforms", help="comma-separated transforms of the detector's score "
                        "(default: the equivariance defense's own)")
    parser.add_argument("--clean-percentile", type=float, default=5.0,
                        help="threshold = this percentile of the tuning split's clean scores (default: %(default)s)")
    parser.add_argument("--corruptions", default=",".join(CORRUPTIONS), help="default: all 15")
    parser.add_argument("--severity", type=int, default=3)
    parser.add_argument("--scores", default=",".join(SCORE_KINDS), help="default: all")
    parser.add_argument("--rotation-head", default=str(SSL_HEADS["mmseg"]["rotation"]))
    parser.add_argument("--lambdas", default="0.1,1,10,100", help="adaptive λ_e sweep against the detector")
    parser.add_argument("--attack-steps", type=int, default=20)
    parser.add_argument("--data-root", default=str(DATA), help="reported split (default: the demo benchmark)")
    parser.add_argument("--tune-root", help="tuning split (default: the seed-1 demo split)")
    parser.add_argument("--work-dir", default=str(WORKSPACE / "work_dirs/detect"))
    add_render_option(parser)
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def names(text: str) -> list[str]:
    return [v for v in text.split(",") if v]


def main(argv=None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.render:
            return REPORT.rerender(args.render)
        return detect_attacks(
            num_images=args.num_images, clean_percentile=args.clean_percentile, severity=args.severity,
            score_transforms=args.score_transforms.split(",") if args.score_transforms else None,
            corruptions=names(args.corruptions), scores=names(args.scores), rotation_head=args.rotation_head,
            lambdas=[float(v) for v in names(args.lambdas)], attack_steps=args.attack_steps,
            data_root=args.data_root, tune_root=args.tune_root, work_dir=args.work_dir,
            command=command_line("detect_attacks.py", argv))
    except SettingsError as err:  # a bad value: usage and the message, exit status 2, as for any bad argument
        parser.error(str(err))


if __name__ == "__main__":
    start_tool()
    main()
