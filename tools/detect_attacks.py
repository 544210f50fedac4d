#!/usr/bin/env python
"""Attack detection by the equivariance score, and detect-then-defend, on the demo model.

1. On the tuning split (seed 1): per-image equivariance scores of clean and PGD-20 images
   (with ``--score-transforms``, default: the defense's own), their AUROC (scikit-learn)
   and ROC curve (PNG); the threshold is the ``--clean-percentile`` percentile of the
   clean scores (that share of clean images would be defended).
2. On the first N images of the reported val split (seed 0): mIoU and seconds, clean and
   under PGD-20, for vanilla / equivariance / the detector alone (flags nothing: its cost) /
   detect-then-defend with that threshold, and the share of images flagged.

Example::

    python tools/detect_attacks.py --num-images 16 --score-transforms hflip,resize:0.5
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS))

from run_demo import DATA, build_demo_runner  # noqa: E402
from tune_defense import ensure_tune_data  # noqa: E402

PGD = dict(type="pgd", eps=4, steps=20)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=16)
    parser.add_argument("--score-transforms", help="comma-separated transforms of the detector's score "
                        "(default: the equivariance defense's own)")
    parser.add_argument("--clean-percentile", type=float, default=5.0,
                        help="threshold = this percentile of the tuning split's clean scores (default: %(default)s)")
    parser.add_argument("--work-dir", default=str(TOOLS.parent / "work_dirs/detect"))
    args = parser.parse_args(argv)
    score_transforms = args.score_transforms.split(",") if args.score_transforms else None
    # The detector alone: threshold −1 flags nothing, so it only scores (its cost, its scores).
    detector = dict(type="detect_then_defend", threshold=-1.0, score_transforms=score_transforms)
    out = Path(args.work_dir)
    out.mkdir(parents=True, exist_ok=True)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from sklearn.metrics import roc_auc_score, roc_curve

    from equi_ext.mmseg.evaluation import evaluate_grid, grid_table

    tune = build_demo_runner(ensure_tune_data(), args.num_images, out / "tune")
    rows = {r["attack"]: r for r in evaluate_grid(tune, {"detector": detector}, {"clean": None, "pgd": PGD})}
    clean, attacked = np.array(rows["clean"]["image_scores"]), np.array(rows["pgd"]["image_scores"])
    labels = np.r_[np.zeros(len(clean)), np.ones(len(attacked))]
    suspicion = -np.r_[clean, attacked]  # low equivariance = attacked
    auroc = float(roc_auc_score(labels, suspicion))
    threshold = float(np.percentile(clean, args.clean_percentile))
    fpr, tpr, _ = roc_curve(labels, suspicion)
    plt.figure(figsize=(4, 4))
    plt.plot(fpr, tpr, label=f"equivariance score (AUROC {auroc:.3f})")
    plt.plot([0, 1], [0, 1], "k:", lw=0.8)
    plt.xlabel("false positive rate (clean flagged)")
    plt.ylabel("true positive rate (PGD-20 flagged)")
    plt.legend(loc="lower right")
    plt.tight_layout()
    plt.savefig(out / "roc_pgd.png", dpi=120)

    val = build_demo_runner(DATA, args.num_images, out / "val")
    defenses = {"vanilla": None, "equivariance": dict(type="equi"), "detector alone": detector,
                "detect-then-defend": dict(detector, threshold=threshold)}
    grid = evaluate_grid(val, defenses, {"clean": None, "PGD-20": PGD})
    cell = {(r["attack"], r["defense"]): r for r in grid}
    flagged = {a: float(np.mean(np.array(cell[(a, "detector alone")]["image_scores"]) < threshold))
               for a in ("clean", "PGD-20")}
    text = (f"Detector transforms: {score_transforms or 'those of the defense'}\n\n"
            f"Tuning split (seed 1), first {args.num_images} images: AUROC clean vs PGD-20 = {auroc:.3f}; "
            f"clean scores {clean.min():.3f}–{clean.max():.3f}, PGD-20 scores {attacked.min():.3f}–"
            f"{attacked.max():.3f}; threshold ({args.clean_percentile:g}th percentile of clean) = {threshold:.3f}\n\n"
            f"Reported split (seed 0), first {args.num_images} images; flagged: clean "
            f"{flagged['clean']:.0%}, PGD-20 {flagged['PGD-20']:.0%}\n\nmIoU\n\n" + grid_table(grid)
            + "\n\nseconds\n\n" + grid_table(grid, "seconds", "{:.0f}") + "\n")
    (out / "detect_results.md").write_text(text)
    result = dict(score_transforms=score_transforms, auroc=auroc, threshold=threshold, flagged=flagged, grid=grid)
    (out / "detect_results.json").write_text(json.dumps(result, indent=2))
    print(text)
    return result


if __name__ == "__main__":
    main()
