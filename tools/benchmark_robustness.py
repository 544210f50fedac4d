#!/usr/bin/env python
"""Table-2-style robustness benchmark of a demo model: attacks × defenses × seeds.

Rows are attacks (clean, PGD, MIM, IFGSM, CW, Houdini, the adaptive attack for each λ_e,
BPDA, EOT-BPDA) and a last row, the per-image worst case over every attack row (the honest
robust number: for each image the attacked input with the lowest IoU, then dataset mIoU).
Columns are defenses (vanilla, random, rotation, contrastive, invariance, equivariance).
Non-adaptive attacks are computed on the undefended model and then defended (the paper's
Table 2); adaptive, BPDA and EOT attack through the defense. Each cell runs once per seed
(the seed of the attack's random start and of the defense's noise and transforms) and the
tables show mean ± std over seeds.

The default model is the demo DeepLabV3 (mIoU from MMSeg's IoUMetric); ``--detectron2``
benchmarks the demo Mask R-CNN instead (COCO mask AP from Detectron2's COCOEvaluator; the
per-image quality is each image's own mask AP; attacks that need dense logits — CW, Houdini —
do not apply and their rows say so).

Every image's result is written atomically under ``WORK_DIR/cells`` as it finishes;
``--resume`` skips every image already written, so a killed run continues where it stopped
and ends with the same numbers. Writes ``robustness.{md,csv,json}`` into the work dir.

Example::

    python tools/benchmark_robustness.py --num-images 8 --seeds 0,1,2
    python tools/benchmark_robustness.py --detectron2 --num-images 6 --seeds 0 --work-dir work_dirs/robustness_d2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from equi_ext.evaluation.backends import build_backend
from equi_ext.evaluation.demo import DATA, EPS, REPO, SSL_HEADS, ensure_data
from equi_ext.reporting import slug

DEFENSE_NAMES = ("vanilla", "random", "rotation", "contrastive", "invariance", "equivariance")
ATTACK_NAMES = ("clean", "pgd", "mim", "ifgsm", "cw", "houdini", "adaptive", "bpda", "eot")
WORST = "worst case (per image)"


def attack_rows(names: list[str], steps: int, bpda_steps: int, lambdas: list[float],
                eot_samples: int) -> dict[str, dict | None]:
    """Row label → attack config (None = clean); ``adaptive`` gives one row per λ_e."""
    rows: dict[str, dict | None] = {}
    for name in names:
        if name == "clean":
            rows["clean"] = None
        elif name == "adaptive":
            for lam in lambdas:
                rows[f"adaptive λ_e={lam:g}"] = dict(type="adaptive", eps=EPS, steps=steps, lambda_e=lam)
        elif name == "bpda":
            rows[f"BPDA-{bpda_steps}"] = dict(type="bpda", eps=EPS, steps=bpda_steps)
        elif name == "eot":
            rows[f"EOT-BPDA-{bpda_steps}×{eot_samples}"] = dict(type="eot", eps=EPS, steps=bpda_steps,
                                                                samples=eot_samples)
        else:
            rows[f"{name.upper() if name != 'houdini' else 'Houdini'}-{steps}"] = dict(type=name, eps=EPS, steps=steps)
    return rows


def with_seed(cfg: dict | None, seed: int) -> dict | None:
    return None if cfg is None else dict(cfg, seed=seed)


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def parse_list(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [v for v in names if v not in allowed]
    if unknown or not names:
        raise SystemExit(f"error: unknown {what} {unknown or text!r}; choose from {', '.join(allowed)}")
    return names


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=8, help="first N val images (default: %(default)s)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated run seeds (default: %(default)s)")
    parser.add_argument("--detectron2", action="store_true", help="benchmark the demo Mask R-CNN (mask AP)")
    parser.add_argument("--preset", default="fast",
                        help="MMSeg: budget of the optimised defenses (default: %(default)s); the Mask R-CNN "
                             "keeps its config's tuned settings")
    parser.add_argument("--defenses", default=",".join(DEFENSE_NAMES), help="columns (default: all)")
    parser.add_argument("--attacks", default=",".join(ATTACK_NAMES), help="rows (default: all)")
    parser.add_argument("--steps", type=int, default=10, help="attack steps (default: %(default)s)")
    parser.add_argument("--bpda-steps", type=int, default=10, help="BPDA / EOT steps (default: %(default)s)")
    parser.add_argument("--eot-samples", type=int, default=2)
    parser.add_argument("--lambdas", default="0.1,1,10", help="adaptive λ_e sweep (default: %(default)s)")
    parser.add_argument("--data-root", default=str(DATA), help="val images (default: the demo benchmark)")
    parser.add_argument("--checkpoint", help="model weights (default: the demo model's)")
    parser.add_argument("--work-dir", default=str(REPO / "work_dirs/robustness"))
    parser.add_argument("--resume", action="store_true", help="skip images already recorded in the work dir")
    args = parser.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
        lambdas = [float(v) for v in args.lambdas.split(",")]
    except ValueError as err:
        raise SystemExit(f"error: --seeds takes integers and --lambdas numbers, comma-separated ({err})") from None
    if args.num_images < 1 or args.steps < 1 or args.bpda_steps < 1 or args.eot_samples < 1:
        raise SystemExit("error: --num-images, --steps, --bpda-steps and --eot-samples must be >= 1")
    if args.checkpoint and not Path(args.checkpoint).is_file():
        raise SystemExit(f"error: checkpoint {args.checkpoint} does not exist")
    defense_names = parse_list(args.defenses, DEFENSE_NAMES, "defense")
    framework = "detectron2" if args.detectron2 else "mmseg"
    for name in defense_names:
        if name in SSL_HEADS[framework] and not SSL_HEADS[framework][name].is_file():
            raise SystemExit(f"error: the {name} baseline needs its head {SSL_HEADS[framework][name]}: "
                             f"train it with tools/train_ssl_head.py")
    all_rows = attack_rows(parse_list(args.attacks, ATTACK_NAMES, "attack"), args.steps, args.bpda_steps, lambdas,
                           args.eot_samples)
    out = Path(args.work_dir)
    if Path(args.data_root) == DATA:
        ensure_data()

    from equi_ext.reporting import write_report

    backend = build_backend(args.detectron2, Path(args.data_root), args.num_images, out,
                            Path(args.checkpoint) if args.checkpoint else None, args.preset)
    columns = {name: backend.defense(name) for name in defense_names}
    rows = {label: cfg for label, cfg in all_rows.items() if backend.supports(cfg)}
    skipped = [label for label in all_rows if label not in rows]
    start = time.perf_counter()
    cells: list[dict] = []
    for seed in seeds:
        for defense, defense_cfg in columns.items():
            attacked = []
            for attack, attack_cfg in rows.items():
                record_dir = out / "cells" / f"seed{seed}" / slug(defense) / slug(attack)
                cell = backend.cell((attack, with_seed(attack_cfg, seed)), (defense, with_seed(defense_cfg, seed)),
                                    record_dir, resume=args.resume)
                cell["seed"] = seed
                print(f"  seed {seed}  {defense:<12} {attack:<22} {backend.metric} {cell[backend.key]:6.2f}  "
                      f"({cell['run_images']} images run, {cell['seconds']:.0f} s)", flush=True)
                cells.append(cell)
                if attack_cfg is not None:
                    attacked.append(cell)
            if attacked:
                worst = backend.worst_case(attacked)
                cells.append({"attack": WORST, "defense": defense, "seed": seed, backend.key: worst[backend.key],
                              "picks": worst["picks"]})
    elapsed = time.perf_counter() - start

    labels = list(rows) + ([WORST] if any(c is not None for c in rows.values()) else [])
    value = {(c["attack"], c["defense"], c["seed"]): c[backend.key] for c in cells}
    lines = [f"{backend.metric} (%) of the {backend.model_name} on the first {args.num_images} val images, "
             f"ε = {EPS:g}, {backend.settings}, seeds {args.seeds} (mean ± std)", "",
             "| attack | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for label in labels:
        lines.append(f"| {label} | " + " | ".join(mean_std([value[(label, d, s)] for s in seeds])
                                                  for d in columns) + " |")
    if skipped:
        lines += ["", f"Not applicable to this model (they need dense logits): {', '.join(skipped)}."]
    lines += ["", f"Command: `python tools/benchmark_robustness.py {' '.join(argv if argv is not None else sys.argv[1:])}`",
              f"Evaluation time: {elapsed:.0f} s (this invocation)"]
    csv_rows = [{"attack": c["attack"], "defense": c["defense"], "seed": c["seed"], backend.key: c[backend.key],
                 "seconds": c.get("seconds", float("nan"))} for c in cells]
    data = dict(framework=backend.framework, metric=backend.key, num_images=args.num_images, eps=EPS,
                settings=backend.settings, seeds=seeds, not_applicable=skipped,
                columns={k: v for k, v in columns.items()}, rows={k: v for k, v in rows.items()},
                table={label: {d: [value[(label, d, s)] for s in seeds] for d in columns} for label in labels},
                cells=[{k: v for k, v in c.items() if k != "per_image"} for c in cells], seconds=elapsed)
    write_report(out, "robustness", "\n".join(lines) + "\n", data, csv_rows)
    return data


if __name__ == "__main__":
    main()
