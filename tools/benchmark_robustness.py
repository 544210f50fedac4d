#!/usr/bin/env python
"""Table-2-style robustness benchmark of the demo DeepLabV3: attacks × defenses × seeds.

Rows are attacks (clean, PGD, MIM, IFGSM, CW, Houdini, the adaptive attack for each λ_e,
BPDA, EOT-BPDA) and a last row, the per-image worst case over every attack row (the honest
robust number: for each image the attacked input with the lowest IoU, then dataset mIoU).
Columns are defenses (vanilla, random, rotation, contrastive, invariance, equivariance).
Non-adaptive attacks are computed on the undefended model and then defended (the paper's
Table 2); adaptive, BPDA and EOT attack through the defense. Each cell runs once per seed
(the seed of the attack's random start and of the defense's noise and transforms) and the
tables show mean ± std over seeds.

Every image's result is written atomically under ``WORK_DIR/cells`` as it finishes;
``--resume`` skips every image already written, so a killed run continues where it stopped
and ends with the same numbers. Writes ``robustness.{md,csv,json}`` into the work dir.

Example::

    python tools/benchmark_robustness.py --num-images 8 --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS))
sys.path.insert(0, str(TOOLS.parent))

from run_demo import CHECKPOINT, DATA, EPS, build_demo_runner, ensure_data  # noqa: E402

#: head checkpoints of the self-supervised baselines for the demo model (tools/train_ssl_head.py)
SSL_HEADS = {"rotation": TOOLS.parent / "checkpoints/ssl/deeplabv3_r18c16-d8_synthetic-128x128_rotation.pth",
             "contrastive": TOOLS.parent / "checkpoints/ssl/deeplabv3_r18c16-d8_synthetic-128x128_contrastive.pth"}
DEFENSE_NAMES = ("vanilla", "random", "rotation", "contrastive", "invariance", "equivariance")
ATTACK_NAMES = ("clean", "pgd", "mim", "ifgsm", "cw", "houdini", "adaptive", "bpda", "eot")
WORST = "worst case (per image)"


def defense_columns(names: list[str], preset: str) -> dict[str, dict | None]:
    """Column label → defense config (None = vanilla). Budgets follow ``preset`` (ε_v, T, η)."""
    columns = {}
    for name in names:
        if name == "vanilla":
            columns[name] = None
        elif name == "random":
            from equi_ext.core.optimizer import PRESETS

            columns[name] = dict(type="random", eps_v=PRESETS[preset]["eps_v"])
        elif name in SSL_HEADS:
            columns[name] = dict(type=name, preset=preset, head=str(SSL_HEADS[name]))
        else:
            columns[name] = dict(type="equi" if name == "equivariance" else name, preset=preset)
    return columns


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


def slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=-]+", "_", label.replace("λ_e", "lambda"))


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
    parser.add_argument("--preset", default="fast", help="budget of the optimised defenses (default: %(default)s)")
    parser.add_argument("--defenses", default=",".join(DEFENSE_NAMES), help="columns (default: all)")
    parser.add_argument("--attacks", default=",".join(ATTACK_NAMES), help="rows (default: all)")
    parser.add_argument("--steps", type=int, default=10, help="attack steps (default: %(default)s)")
    parser.add_argument("--bpda-steps", type=int, default=10, help="BPDA / EOT steps (default: %(default)s)")
    parser.add_argument("--eot-samples", type=int, default=2)
    parser.add_argument("--lambdas", default="0.1,1,10", help="adaptive λ_e sweep (default: %(default)s)")
    parser.add_argument("--data-root", default=str(DATA), help="val images (default: the demo benchmark)")
    parser.add_argument("--checkpoint", default=str(CHECKPOINT))
    parser.add_argument("--work-dir", default=str(TOOLS.parent / "work_dirs/robustness"))
    parser.add_argument("--resume", action="store_true", help="skip images already recorded in the work dir")
    args = parser.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
        lambdas = [float(v) for v in args.lambdas.split(",")]
    except ValueError as err:
        raise SystemExit(f"error: --seeds takes integers and --lambdas numbers, comma-separated ({err})") from None
    if args.num_images < 1 or args.steps < 1 or args.bpda_steps < 1 or args.eot_samples < 1:
        raise SystemExit("error: --num-images, --steps, --bpda-steps and --eot-samples must be >= 1")
    if not Path(args.checkpoint).is_file():
        raise SystemExit(f"error: checkpoint {args.checkpoint} does not exist")
    columns = defense_columns(parse_list(args.defenses, DEFENSE_NAMES, "defense"), args.preset)
    rows = attack_rows(parse_list(args.attacks, ATTACK_NAMES, "attack"), args.steps, args.bpda_steps, lambdas,
                       args.eot_samples)
    for name, cfg in columns.items():
        if name in SSL_HEADS and not Path(cfg["head"]).is_file():
            raise SystemExit(f"error: the {name} baseline needs its head {cfg['head']}: "
                             f"train it with tools/train_ssl_head.py")
    out = Path(args.work_dir)
    if Path(args.data_root) == DATA:
        ensure_data()

    from equi_ext.mmseg.evaluation import evaluate_cell, worst_case
    from equi_ext.reporting import write_report

    runner = build_demo_runner(Path(args.data_root), args.num_images, out / "runs", Path(args.checkpoint),
                               test_evaluator=dict(type="PerImageIoUMetric", iou_metrics=["mIoU"]))
    start = time.perf_counter()
    cells: list[dict] = []
    for seed in seeds:
        for defense, defense_cfg in columns.items():
            attacked = []
            for attack, attack_cfg in rows.items():
                record_dir = out / "cells" / f"seed{seed}" / slug(defense) / slug(attack)
                cell = evaluate_cell(runner, (attack, with_seed(attack_cfg, seed)),
                                     (defense, with_seed(defense_cfg, seed)), record_dir, resume=args.resume)
                cell["seed"] = seed
                print(f"  seed {seed}  {defense:<12} {attack:<22} mIoU {cell['mIoU']:6.2f}  "
                      f"({cell['run_images']} images run, {cell['seconds']:.0f} s)", flush=True)
                cells.append(cell)
                if attack_cfg is not None:
                    attacked.append(cell)
            if attacked:
                worst = worst_case(runner, attacked)
                cells.append(dict(attack=WORST, defense=defense, seed=seed, mIoU=worst["mIoU"],
                                  picks=worst["picks"]))
    elapsed = time.perf_counter() - start

    labels = list(rows) + ([WORST] if any(c is not None for c in rows.values()) else [])
    value = {(c["attack"], c["defense"], c["seed"]): c["mIoU"] for c in cells}
    lines = [f"mIoU (%) of the demo DeepLabV3 on the first {args.num_images} val images, ε = {EPS:g}, "
             f"defense budgets from preset `{args.preset}`, seeds {args.seeds} (mean ± std)", "",
             "| attack | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for label in labels:
        lines.append(f"| {label} | " + " | ".join(mean_std([value[(label, d, s)] for s in seeds])
                                                  for d in columns) + " |")
    lines += ["", f"Command: `python tools/benchmark_robustness.py {' '.join(argv if argv is not None else sys.argv[1:])}`",
              f"Evaluation time: {elapsed:.0f} s (this invocation)"]
    csv_rows = [dict(attack=c["attack"], defense=c["defense"], seed=c["seed"], mIoU=c["mIoU"],
                     seconds=c.get("seconds", float("nan"))) for c in cells]
    data = dict(num_images=args.num_images, eps=EPS, preset=args.preset, seeds=seeds,
                columns={k: v for k, v in columns.items()}, rows={k: v for k, v in rows.items()},
                table={label: {d: [value[(label, d, s)] for s in seeds] for d in columns} for label in labels},
                cells=[{k: v for k, v in c.items() if k != "per_image"} for c in cells], seconds=elapsed)
    write_report(out, "robustness", "\n".join(lines) + "\n", data, csv_rows)
    return data


if __name__ == "__main__":
    main()
