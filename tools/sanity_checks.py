#!/usr/bin/env python
"""Evaluation-honesty report for the defended demo model (Athalye et al. 2018, Carlini et al.
2019, Croce et al. 2022): is the defense's robustness real or an artefact of weak attacks?

Every attacked run goes through the framework's own evaluation against the defended model:
MMSeg's test loop with ``PerImageIoUMetric`` (IoUMetric's aggregation) for the demo DeepLabV3,
or, with ``--detectron2``, ``inference_on_dataset`` + ``COCOEvaluator`` (mask AP) for the demo
Mask R-CNN. Checks, each printed as pass/fail with its numbers (mIoU or mask AP points):

(a) an unbounded attack (BPDA at ε = 255, with the step count where the ε-bounded BPDA curve
    stopped) drives defended mIoU to ~0 — to at most what the same attack leaves of the vanilla
    model (mIoU has a floor above 0: an image predicted all background keeps its background IoU);
(b) more steps never make the defense look stronger: BPDA steps are doubled until mIoU moves by
    < 0.5 points (the convergence curve), and PGD random restarts are pooled per image;
(c) BPDA and EOT-BPDA through the defense are at least as strong as PGD transferred from the
    vanilla model (a white-box attack weaker than a transfer attack signals gradient masking);
(d) the adaptive attack's λ_e sweep is at least as strong as plain PGD;
(e) transfer from the vanilla model (PGD on the undefended model, then defended) is reported;
(f) white-box through the unrolled defense (``unrolled``: gradients through all T steps, sign()
    passed straight through) is no stronger than BPDA, i.e. BPDA's identity backward does not
    overstate robustness (the worst case includes it either way).

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
from pathlib import Path

from equi_ext.evaluation.backends import build_backend
from equi_ext.evaluation.demo import DATA, EPS, REPO, ensure_data
from equi_ext.reporting import slug

TOLERANCE = 0.5  # mIoU / AP points: "moved" / "stronger" below this is noise on a few images


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=8, help="first N val images (default: %(default)s)")
    parser.add_argument("--detectron2", action="store_true", help="check the demo Mask R-CNN (mask AP)")
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
    parser.add_argument("--work-dir", default=str(REPO / "work_dirs/sanity"))
    parser.add_argument("--resume", action="store_true", help="reuse the per-image records of finished images")
    args = parser.parse_args(argv)
    if args.num_images < 1 or args.bpda_steps < 1 or args.max_bpda_steps < args.bpda_steps:
        raise SystemExit("error: need --num-images >= 1 and 1 <= --bpda-steps <= --max-bpda-steps")
    out = Path(args.work_dir)
    out.mkdir(parents=True, exist_ok=True)
    if Path(args.data_root) == DATA:
        ensure_data()

    from equi_ext.reporting import write_report

    backend = build_backend(args.detectron2, Path(args.data_root), args.num_images, out, preset=args.preset)
    defense, metric, key = backend.defense("equivariance"), backend.metric, backend.key

    def run(label: str, attack: dict | None, defended: bool = True) -> dict:
        column = "defended" if defended else "vanilla"
        row = backend.cell((label, attack), (column, defense if defended else None),
                           out / "cells" / column / slug(label), resume=args.resume)
        print(f"  {label:<34} {column:>8}  {metric} {row[key]:6.2f}", flush=True)
        return row

    pgd = dict(type="pgd", eps=EPS, steps=args.steps)
    rows = {"clean": run("clean", None, defended=False), "clean + defense": run("clean + defense", None),
            "PGD (vanilla)": run("PGD (vanilla)", pgd, defended=False)}
    bounded = []  # every ε-bounded attack on the defended model: the worst case pools them
    for restart in range(args.restarts):
        label = f"PGD-{args.steps} transfer, restart {restart}"
        rows[label] = run(label, dict(pgd, seed=restart))
        bounded.append(rows[label])
    curve = []
    steps = args.bpda_steps
    while True:
        label = f"BPDA-{steps}"
        rows[label] = run(label, dict(type="bpda", eps=EPS, steps=steps))
        bounded.append(rows[label])
        curve.append((steps, rows[label][key]))
        converged = len(curve) > 1 and abs(curve[-1][1] - curve[-2][1]) < TOLERANCE
        if converged or steps * 2 > args.max_bpda_steps:
            break
        steps *= 2
    eot_label = f"EOT-BPDA-{args.bpda_steps} ({args.eot_samples} samples)"
    rows[eot_label] = run(eot_label, dict(type="eot", eps=EPS, steps=args.bpda_steps, samples=args.eot_samples))
    bounded.append(rows[eot_label])
    adaptive = {}
    for lam in (float(v) for v in args.lambdas.split(",")):
        label = f"adaptive λ_e={lam:g}"
        rows[label] = run(label, dict(type="adaptive", eps=EPS, steps=args.steps, lambda_e=lam))
        bounded.append(rows[label])
        adaptive[lam] = rows[label][key]
    unrolled_label = f"unrolled-{args.steps}"
    rows[unrolled_label] = run(unrolled_label, dict(type="unrolled", eps=EPS, steps=args.steps))
    bounded.append(rows[unrolled_label])
    unbounded_label = f"BPDA-{curve[-1][0]} at ε=255"
    unbounded = dict(type="bpda", eps=255.0, steps=curve[-1][0])
    rows[unbounded_label] = run(unbounded_label, unbounded)
    floor_label = f"PGD-{curve[-1][0]} at ε=255 (vanilla)"
    rows[floor_label] = run(floor_label, unbounded, defended=False)  # what "~0" means for this metric

    transfer = min(rows[f"PGD-{args.steps} transfer, restart {r}"][key] for r in range(args.restarts))
    bpda = curve[-1][1]
    rising = [(a, b) for (a, b) in zip(curve, curve[1:]) if b[1] > a[1] + TOLERANCE]
    checks = [
        ("a", f"unbounded attack drives defended {metric} to ~0 (the vanilla model's floor)",
         rows[unbounded_label][key] <= max(5.0, rows[floor_label][key] + TOLERANCE),
         f"{unbounded_label}: {rows[unbounded_label][key]:.2f}; {floor_label}: {rows[floor_label][key]:.2f} "
         f"(pass: ≤ max(5, floor + {TOLERANCE}))"),
        ("b", "more BPDA steps never look stronger; converged", not rising and (len(curve) > 1 and abs(
            curve[-1][1] - curve[-2][1]) < TOLERANCE),
         "curve " + ", ".join(f"{s}: {m:.2f}" for s, m in curve)
         + f" (pass: non-increasing within {TOLERANCE}, last change < {TOLERANCE})"),
        ("c", "BPDA and EOT-BPDA at least as strong as transfer", bpda <= transfer + TOLERANCE
         and rows[eot_label][key] <= rows[f"BPDA-{args.bpda_steps}"][key] + 2 * TOLERANCE,
         f"BPDA-{curve[-1][0]} {bpda:.2f}, {eot_label} {rows[eot_label][key]:.2f}, transfer {transfer:.2f}"),
        ("d", "adaptive λ_e sweep at least as strong as PGD transfer", min(adaptive.values()) <= transfer + TOLERANCE,
         ", ".join(f"λ_e={k:g}: {v:.2f}" for k, v in adaptive.items()) + f"; transfer {transfer:.2f}"),
        ("e", "transfer from the vanilla model", True,
         f"PGD-{args.steps} on vanilla {rows['PGD (vanilla)'][key]:.2f}; then defended "
         + ", ".join(f"{rows[f'PGD-{args.steps} transfer, restart {r}'][key]:.2f}" for r in range(args.restarts))),
        ("f", "white-box through the unrolled defense no stronger than BPDA",
         rows[unrolled_label][key] >= bpda - TOLERANCE,
         f"{unrolled_label} {rows[unrolled_label][key]:.2f}, BPDA-{curve[-1][0]} {bpda:.2f}"),
    ]
    worst = backend.worst_case(bounded)
    strongest_single = min(r[key] for r in bounded)
    lines = [f"{backend.model_name}, first {args.num_images} val images (seed 0), {backend.settings}, ε = {EPS:g}",
             "", f"clean {rows['clean'][key]:.2f}, clean + defense {rows['clean + defense'][key]:.2f}, "
             f"PGD-{args.steps} on vanilla {rows['PGD (vanilla)'][key]:.2f} ({metric})", "",
             "| check | what | result | numbers |", "|---|---|---|---|"]
    for check, what, passed, numbers in checks:
        lines.append(f"| ({check}) | {what} | {'pass' if passed else 'FAIL'} | {numbers} |")
    taken = {name: worst["picks"].count(name) for name in dict.fromkeys(worst["picks"])}
    lines += ["", f"**Per-image worst case over the {len(bounded)} ε = {EPS:g} runs: {metric} {worst[key]:.2f}** "
              f"(strongest single run {strongest_single:.2f}); images taken from: "
              + ", ".join(f"{k.split(' / ')[0]} ×{v}" for k, v in taken.items())]
    text = "\n".join(lines) + "\n"
    result = dict(framework=backend.framework, metric=key, settings=backend.settings, num_images=args.num_images,
                  worst_case=worst[key], strongest_single=strongest_single, bpda_curve=curve,
                  checks=[dict(check=k, what=w, passed=p, numbers=n) for k, w, p, n in checks],
                  runs={label: {k: v for k, v in r.items() if k != "per_image"} for label, r in rows.items()},
                  worst_case_picks=worst["picks"])
    write_report(out, "sanity_checks", text, result)
    return result


if __name__ == "__main__":
    main()
