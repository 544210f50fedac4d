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
from pathlib import Path

from equi_ext.evaluation.demo import DATA, REPO, build_demo_runner, ensure_data, ensure_tune_data

CANDIDATES = {
    "paper": dict(preset="paper"),
    "default": dict(preset="default"),
    "fast": dict(preset="fast"),
    "T20-eta12": dict(transforms="pilot", steps=20, eps_v=6, step_size=12),
    "T20-eta1.5": dict(transforms="pilot", steps=20, eps_v=6, step_size=1.5),
    "T8-eta1.5": dict(transforms="pilot", steps=8, eps_v=6, step_size=1.5),
    "T4-eta3": dict(transforms="pilot", steps=4, eps_v=6, step_size=3),
    "T8-eta1-epsv4": dict(transforms="pilot", steps=8, eps_v=4, step_size=1),
    "T8-eta0.75-epsv3": dict(transforms="pilot", steps=8, eps_v=3, step_size=0.75),
    "T8-eta1.5-sgd": dict(transforms="pilot", steps=8, eps_v=6, step_size=1.5, optimizer="sgd"),
    "fr-T8-epsv6": dict(transforms="flip_resize", steps=8, eps_v=6, step_size=1.5),
    "fr-T8-epsv4": dict(transforms="flip_resize", steps=8, eps_v=4, step_size=1),
    "fr-T4-epsv4": dict(transforms="flip_resize", steps=4, eps_v=4, step_size=2),
    "pilot-T8-epsv4": dict(transforms="pilot", steps=8, eps_v=4, step_size=1),
    # Cheaper settings for the `fast` preset (README "Speed"): fewer steps, fewer or smaller copies per step.
    "fr-T20-epsv4-eta0.5": dict(transforms="flip_resize", steps=20, eps_v=4, step_size=0.5),  # reference
    "fr-T8-epsv4-m2": dict(transforms="flip_resize", steps=8, eps_v=4, step_size=1, transforms_per_step=2),
    "fr-T4-epsv4-eta2-m1": dict(transforms="flip_resize", steps=4, eps_v=4, step_size=2, transforms_per_step=1),
    "fr-T8-epsv4-m1": dict(transforms="flip_resize", steps=8, eps_v=4, step_size=1, transforms_per_step=1),
    "fr-T6-epsv4-eta1.33-m2": dict(transforms="flip_resize", steps=6, eps_v=4, step_size=4 / 3,
                                   transforms_per_step=2),
    "fr-T4-epsv4-m2": dict(transforms="flip_resize", steps=4, eps_v=4, step_size=2, transforms_per_step=2),
    "f3r-T4-epsv4": dict(transforms=["hflip", "resize:0.5", "resize:0.75", "resize:1.5"], steps=4, eps_v=4,
                         step_size=2),
    "f3r-T6-epsv4-m2": dict(transforms=["hflip", "resize:0.5", "resize:0.75", "resize:1.5"], steps=6, eps_v=4,
                            step_size=1.5, transforms_per_step=2),
}

# Detectron2 candidates, as EQUI overrides of configs/demo/mask_rcnn_R18_FPN_synthetic-128x128_equi.yaml.
FLIP_3RESIZES = "['hflip','resize:0.5','resize:0.75','resize:1.5']"
D2_CANDIDATES = {
    "default": [],
    "fr-T4-epsv4": ["EQUI.DEFENSE_STEPS", "4", "EQUI.STEP_SIZE", "2.0"],
    "f3r-T8-epsv4": ["EQUI.TRANSFORMS", FLIP_3RESIZES],
    "f3r-T4-epsv4": ["EQUI.TRANSFORMS", FLIP_3RESIZES, "EQUI.DEFENSE_STEPS", "4", "EQUI.STEP_SIZE", "2.0"],
    "f3r-T4-epsv6-eta3": ["EQUI.TRANSFORMS", FLIP_3RESIZES, "EQUI.DEFENSE_STEPS", "4", "EQUI.EPS_V", "6.0",
                          "EQUI.STEP_SIZE", "3.0"],
    "fr-T8-epsv4-masklogits": ["EQUI.FEATURE", "fpn+mask_logits"],
    "f3r-T4-epsv8-eta4": ["EQUI.TRANSFORMS", FLIP_3RESIZES, "EQUI.DEFENSE_STEPS", "4", "EQUI.EPS_V", "8.0",
                          "EQUI.STEP_SIZE", "4.0"],
    "f3r-T8-epsv6-eta1.5": ["EQUI.TRANSFORMS", FLIP_3RESIZES, "EQUI.DEFENSE_STEPS", "8", "EQUI.EPS_V", "6.0",
                            "EQUI.STEP_SIZE", "1.5"],
    "f3r-T4-epsv6-eta3-p2p4": ["EQUI.TRANSFORMS", FLIP_3RESIZES, "EQUI.DEFENSE_STEPS", "4", "EQUI.EPS_V", "6.0",
                               "EQUI.STEP_SIZE", "3.0", "EQUI.FPN_LEVELS", "['p2','p3','p4']"],
}


def tune_detectron2(args) -> list[dict]:
    """Mask AP of each candidate on the tuning split: clean + defense, PGD-10, PGD-10 + defense."""
    from detectron2.modeling import build_model

    from equi_ext.detectron2 import load_config, register_synthetic_shapes
    from equi_ext.detectron2.evaluation import evaluate_scenarios, load_weights
    from equi_ext.reporting import write_report

    (dataset,) = register_synthetic_shapes(ensure_tune_data(), prefix="synthetic_shapes_tune")
    chosen = args.candidates.split(",") if args.candidates else list(D2_CANDIDATES)
    unknown = [c for c in chosen if c not in D2_CANDIDATES]
    if unknown:
        raise SystemExit(f"error: unknown candidates {unknown}; valid: {list(D2_CANDIDATES)}")
    lines = [f"Tuning split (seed 1), first {args.num_images} images, mask AP, PGD-10 at eps 4", "",
             "| candidate | clean + defense | PGD-10 | PGD-10 + defense | seconds (defended) |", "|---|---|---|---|---|"]
    results = []
    for i, name in enumerate(chosen):
        cfg = load_config(REPO / "configs/demo/mask_rcnn_R18_FPN_synthetic-128x128_equi.yaml",
                          ["EQUI.SYNTHETIC_ROOT", "", "DATASETS.TEST", f"('{dataset}',)", *D2_CANDIDATES[name]])
        model = build_model(cfg)
        load_weights(model, str(REPO / cfg.MODEL.WEIGHTS))
        scenarios = ["clean_defended", "defended"] if i else ["clean", "clean_defended", "attacked", "defended"]
        rows = {r["scenario"]: r for r in evaluate_scenarios(
            cfg, None, scenarios=scenarios, num_images=args.num_images,
            output_dir=str(Path(args.work_dir) / "d2" / name), model=model)}
        if not i:
            base = rows
            lines.insert(4, f"| vanilla | {rows['clean']['segm_AP']:.2f} | {rows['attacked']['segm_AP']:.2f} | — | — |")
        lines.append(f"| {name} | {rows['clean_defended']['segm_AP']:.2f} | {base['attacked']['segm_AP']:.2f} "
                     f"| {rows['defended']['segm_AP']:.2f} | {rows['defended']['seconds']:.0f} |")
        results.append(dict(candidate=name, opts=D2_CANDIDATES[name], rows=list(rows.values())))
    write_report(args.work_dir, f"tune_detectron2_{args.num_images}img", "\n".join(lines) + "\n", results)
    return results


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=16)
    parser.add_argument("--work-dir", default=str(REPO / "work_dirs/tune"))
    parser.add_argument("--feature-layer", default="backbone")
    parser.add_argument("--candidates", help="comma-separated names from: " + ", ".join(CANDIDATES)
                        + " (default: paper,T20-eta12,T20-eta1.5,T8-eta1.5,T4-eta3); with --detectron2 from: "
                        + ", ".join(D2_CANDIDATES) + " (default: all)")
    parser.add_argument("--detectron2", action="store_true", help="tune the demo Mask R-CNN instead")
    parser.add_argument("--split", choices=("tune", "val"), default="tune",
                        help="'val' re-runs chosen candidates on the reported split, to confirm a choice made on "
                             "'tune' (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.detectron2:
        return tune_detectron2(args)
    args.candidates = args.candidates or "paper,T20-eta12,T20-eta1.5,T8-eta1.5,T4-eta3"

    from equi_ext.mmseg import configure
    from equi_ext.mmseg.evaluation import evaluate_grid, grid_table
    from equi_ext.reporting import write_report

    if args.split == "val":
        ensure_data()
    data = ensure_tune_data() if args.split == "tune" else DATA
    runner = build_demo_runner(data, args.num_images, Path(args.work_dir))
    configure(runner.model, feature_layer=args.feature_layer)
    chosen = args.candidates.split(",")
    unknown = [c for c in chosen if c not in CANDIDATES]
    if unknown:
        raise SystemExit(f"error: unknown candidates {unknown}; valid: {list(CANDIDATES)}")
    defenses = {"vanilla": None, **{name: dict(type="equi", **CANDIDATES[name]) for name in chosen}}
    attacks = {"clean": None, "PGD-20": dict(type="pgd", eps=4, steps=20)}
    rows = evaluate_grid(runner, defenses, attacks)
    split = "Tuning split (seed 1)" if args.split == "tune" else "Reported val split (seed 0)"
    text = (f"{split}, first {args.num_images} images, feature layer {args.feature_layer}\n\n"
            + grid_table(rows) + "\n\nseconds per cell\n\n" + grid_table(rows, "seconds", "{:.0f}") + "\n")
    write_report(args.work_dir, f"{args.split}_{args.feature_layer}_{len(chosen)}cands_{args.num_images}img", text, rows)
    return rows


if __name__ == "__main__":
    main()
