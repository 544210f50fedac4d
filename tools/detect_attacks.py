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
from pathlib import Path

from equi_ext.evaluation.demo import DATA, EPS, REPO, SSL_HEADS, build_demo_runner, ensure_data, ensure_tune_data

PGD = dict(type="pgd", eps=EPS)
#: per-image scores compared as detectors (see score_cfg and sign in main)
SCORE_KINDS = ("equivariance", "output_variance", "invariance", "rotation")


def parse_args(argv):
    from equi_ext.data.corruptions import CORRUPTIONS

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
    parser.add_argument("--work-dir", default=str(REPO / "work_dirs/detect"))
    args = parser.parse_args(argv)
    args.corruptions = [c for c in args.corruptions.split(",") if c]
    args.scores = [s for s in args.scores.split(",") if s]
    for name in args.corruptions:
        if name not in CORRUPTIONS:
            parser.error(f"unknown corruption {name!r}; valid names: {', '.join(CORRUPTIONS)}")
    for name in args.scores:
        if name not in SCORE_KINDS:
            parser.error(f"unknown score {name!r}; valid names: {', '.join(SCORE_KINDS)}")
    if "rotation" in args.scores and not Path(args.rotation_head).is_file():
        parser.error(f"the rotation score needs its head {args.rotation_head}: train it with tools/train_ssl_head.py")
    if args.num_images < 2 or args.attack_steps < 1:
        parser.error("--num-images must be >= 2 and --attack-steps >= 1")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    score_transforms = args.score_transforms.split(",") if args.score_transforms else None
    # The detector alone: threshold −1 flags nothing, so it only scores (its cost, its scores).
    detector = dict(type="detect_then_defend", threshold=-1.0, score_transforms=score_transforms)
    score_cfg = {"equivariance": "equivariance", "output_variance": "output_variance", "invariance": "invariance",
                 "rotation": dict(type="rotation", head=args.rotation_head)}
    sign = {"equivariance": -1.0, "output_variance": 1.0, "invariance": -1.0, "rotation": -1.0}
    out = Path(args.work_dir)
    if Path(args.data_root) == DATA:
        ensure_data()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from sklearn.metrics import roc_auc_score, roc_curve

    from equi_ext.mmseg import configure
    from equi_ext.mmseg.evaluation import evaluate_grid, grid_table
    from equi_ext.reporting import write_report

    def scores_of(runner, attack: dict | None) -> dict[str, np.ndarray]:
        """Per-image scores of every kind, for the runner's images (attacked first if ``attack``)."""
        result = {}
        for kind in args.scores:
            configure(runner.model, score=score_cfg[kind])
            # the equivariance kind is the detector's own score (its transforms)
            defense = detector if kind == "equivariance" else None
            (row,) = evaluate_grid(runner, {kind: defense}, {"x": attack})
            result[kind] = np.array(row["image_scores"])
        configure(runner.model, score="equivariance")
        return result

    # 1. AUROC on the reported split: clean vs PGD and vs each corruption
    val = build_demo_runner(Path(args.data_root), args.num_images, out / "val")
    pgd = dict(PGD, steps=args.attack_steps)
    conditions = {"clean": scores_of(val, None), f"PGD-{args.attack_steps}": scores_of(val, pgd)}
    for name in args.corruptions:
        runner = build_demo_runner(Path(args.data_root), args.num_images, out / "corrupt",
                                   corruption=dict(corruption=name, severity=args.severity))
        conditions[name] = scores_of(runner, None)
    auroc: dict[str, dict[str, float]] = {}
    curves: dict[str, dict[str, tuple]] = {}
    for condition, scores in conditions.items():
        if condition == "clean":
            continue
        auroc[condition], curves[condition] = {}, {}
        for kind in args.scores:
            labels = np.r_[np.zeros(args.num_images), np.ones(args.num_images)]
            suspicion = sign[kind] * np.r_[conditions["clean"][kind], scores[kind]]
            auroc[condition][kind] = float(roc_auc_score(labels, suspicion))
            fpr, tpr, _ = roc_curve(labels, suspicion)
            curves[condition][kind] = (fpr, tpr)
    names = list(curves)
    cols = min(4, len(names))
    grid_rows = -(-len(names) // cols)
    fig, axes = plt.subplots(grid_rows, cols, figsize=(3.2 * cols, 3.2 * grid_rows), squeeze=False)
    for ax, condition in zip(axes.flat, names):
        for kind, (fpr, tpr) in curves[condition].items():
            ax.plot(fpr, tpr, label=f"{kind} {auroc[condition][kind]:.2f}")
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.set_title(f"clean vs {condition}", fontsize=9)
        ax.set_xlabel("false positive rate", fontsize=8)
        ax.set_ylabel("true positive rate", fontsize=8)
        ax.legend(loc="lower right", fontsize=6, title="AUROC", title_fontsize=6)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "roc_curves.png", dpi=110)
    plt.close(fig)

    # 2. threshold on the tuning split; detect-then-defend on the reported split
    tune = build_demo_runner(Path(args.tune_root) if args.tune_root else ensure_tune_data(), args.num_images,
                             out / "tune")
    (tune_row,) = evaluate_grid(tune, {"detector": detector}, {"clean": None})
    threshold = float(np.percentile(tune_row["image_scores"], args.clean_percentile))
    dtd = dict(detector, threshold=threshold)
    attacks = {"clean": None, f"PGD-{args.attack_steps}": pgd}
    lambdas = [float(v) for v in args.lambdas.split(",") if v]
    for lam in lambdas:  # white-box on the detector's own score (pipeline: score_defense = its scorer)
        attacks[f"adaptive λ_e={lam:g}"] = dict(type="adaptive", eps=EPS, steps=args.attack_steps, lambda_e=lam)
    defenses = {"vanilla": None, "equivariance": dict(type="equi"), "detector alone": detector,
                "detect-then-defend": dtd}
    grid = evaluate_grid(val, defenses, {a: c for a, c in attacks.items() if not a.startswith("adaptive")})
    grid += evaluate_grid(val, {"detector alone": detector, "detect-then-defend": dtd},
                          {a: c for a, c in attacks.items() if a.startswith("adaptive")})
    cell = {(r["attack"], r["defense"]): r for r in grid}
    flagged = {a: float(np.mean(np.array(cell[(a, "detector alone")]["image_scores"]) < threshold)) for a in attacks}
    slip = {a: 1.0 - flagged[a] for a in attacks if a != "clean"}

    lines = [f"Demo DeepLabV3, first {args.num_images} images of the reported split (seed 0); corruptions at "
             f"severity {args.severity}; detector transforms: {score_transforms or 'those of the defense'}", "",
             "AUROC (scikit-learn), clean vs …", "", "| condition | " + " | ".join(args.scores) + " |",
             "|---" * (len(args.scores) + 1) + "|"]
    for condition in names:
        lines.append(f"| {condition} | " + " | ".join(f"{auroc[condition][k]:.3f}" for k in args.scores) + " |")
    corr = [c for c in names if c in args.corruptions]
    if corr:
        lines.append("| mean of the corruptions | " + " | ".join(
            f"{np.mean([auroc[c][k] for c in corr]):.3f}" for k in args.scores) + " |")
    lines += ["", f"Threshold ({args.clean_percentile:g}th percentile of the tuning split's clean equivariance "
              f"scores): {threshold:.3f}", "", "mIoU", "", grid_table(grid), "", "seconds", "",
              grid_table(grid, "seconds", "{:.0f}"), "", "| attack | flagged | slipped through |", "|---|---|---|"]
    lines += [f"| {a} | {flagged[a]:.0%} | " + (f"{slip[a]:.0%}" if a in slip else "—") + " |" for a in attacks]
    result = dict(num_images=args.num_images, severity=args.severity, score_transforms=score_transforms,
                  auroc=auroc, threshold=threshold, flagged=flagged, slipped_through=slip,
                  scores={c: {k: v.tolist() for k, v in s.items()} for c, s in conditions.items()},
                  grid=[{k: v for k, v in r.items() if k != "per_image"} for r in grid])
    csv_rows = [dict(condition=c, score=k, auroc=v) for c, d in auroc.items() for k, v in d.items()]
    write_report(out, "detect_results", "\n".join(lines) + "\n", result, csv_rows)
    return result


if __name__ == "__main__":
    main()
