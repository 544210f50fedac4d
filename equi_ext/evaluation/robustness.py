"""Table-2-style robustness benchmark of a demo model: attacks × defenses × seeds, with the per-image worst case.

Rows are attacks (clean, PGD, MIM, IFGSM, CW, Houdini, the adaptive attack for each λ_e, BPDA,
EOT-BPDA, APGD and SEA) and the worst case over every attack row (the honest robust number): per image
(AutoAttack's definition) and, for mIoU, the greedy search for the lowest dataset metric (quote the lower;
for mask AP the per-image row already is that search). Columns are defenses. PGD, MIM, IFGSM, CW and Houdini are computed on the undefended
model and then defended (the paper's Table 2, transfer); adaptive, BPDA, EOT, APGD and SEA attack through
the defense (APGD and SEA: exact forward through it, gradient at the purified image). Each cell runs once per
seed (the attack's random start, the defense's noise and transforms); tables show mean ± std.
Every image's result is written atomically under ``work_dir/cells`` as it finishes, so ``resume``
continues a killed run and ends with the same numbers.
"""

from __future__ import annotations

import logging
import statistics
import time
from pathlib import Path

from ..cells import Cell
from ..core.validation import SettingsError
from ..reporting import Report, slug
from .backends import build_backend, check_framework
from .demo import DATA, EPS, SSL_HEADS, ensure_data

logger = logging.getLogger(__name__)

DEFENSE_NAMES = ("vanilla", "random", "rotation", "contrastive", "invariance", "equivariance")
ATTACK_NAMES = ("clean", "pgd", "mim", "ifgsm", "cw", "houdini", "adaptive", "bpda", "eot", "apgd", "sea")
WORST = "worst case (per image)"
GREEDY = "worst case (greedy, dataset metric)"


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
        elif name in ("apgd", "sea"):  # through the defense as deployed (on vanilla: the bare model)
            rows[f"{name.upper()}-{steps}"] = dict(type="bpda", attack=dict(type=name, eps=EPS, steps=steps))
        else:
            rows[f"{name.upper() if name != 'houdini' else 'Houdini'}-{steps}"] = dict(type=name, eps=EPS, steps=steps)
    return rows


def with_seed(cfg: dict | None, seed: int) -> dict | None:
    """``cfg`` with ``seed`` (for the ``bpda`` wrapper, on the attack it wraps)."""
    if cfg is None:
        return None
    if isinstance(cfg.get("attack"), dict):
        return dict(cfg, attack=dict(cfg["attack"], seed=seed))
    return dict(cfg, seed=seed)


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def render(data: dict) -> str:
    """The robustness page of a result: attacks × defenses, mean ± std over seeds, and the worst cases."""
    columns = list(data["columns"])
    lines = [f"{data['metric_name']} (%) of the {data['model']} on the first {data['num_images']} val images, "
             f"ε = {data['eps']:g}, {data['settings']}, seeds {','.join(map(str, data['seeds']))} (mean ± std)", "",
             "| attack | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for label, values in data["table"].items():
        lines.append(f"| {label} | " + " | ".join(mean_std(values[d]) for d in columns) + " |")
    if data["not_applicable"]:
        lines += ["", f"Not applicable to this model (they need dense logits): {', '.join(data['not_applicable'])}."]
    lines += ["", f"Evaluation time: {data['seconds']:.0f} s (this invocation)"]
    return "\n".join(lines) + "\n"


REPORT = Report(render)


def benchmark_robustness(*, framework: str = "mmseg", defense_names: list[str], attack_names: list[str], seeds: list[int],
                         num_images: int, steps: int, bpda_steps: int, eot_samples: int, lambdas: list[float],
                         data_root: Path = DATA, checkpoint: Path | None = None, preset: str = "fast",
                         work_dir: Path, resume: bool = False, command: str = "") -> dict:
    """Run the grid on the demo DeepLabV3 (``framework='mmseg'``: mIoU) or Mask R-CNN (mask AP) and write
    ``work_dir/robustness.{md,csv,json}``; returns the JSON's content (table, cells, picks, seconds).

    Raises:
        ValueError: an unknown framework, unknown defense/attack names, budgets < 1, a missing checkpoint or SSL head.
    """
    check_framework(framework)
    for what, names, allowed in (("defense", defense_names, DEFENSE_NAMES), ("attack", attack_names, ATTACK_NAMES)):
        unknown = [n for n in names if n not in allowed]
        if unknown or not names:
            raise SettingsError(f"unknown {what} {unknown or names!r}; choose from {', '.join(allowed)}")
    if num_images < 1 or steps < 1 or bpda_steps < 1 or eot_samples < 1:
        raise SettingsError("num_images, steps, bpda_steps and eot_samples must be >= 1")
    if checkpoint and not Path(checkpoint).is_file():
        raise SettingsError(f"checkpoint {checkpoint} does not exist")
    for name in defense_names:
        if name in SSL_HEADS[framework] and not SSL_HEADS[framework][name].is_file():
            raise SettingsError(f"the {name} baseline needs its head {SSL_HEADS[framework][name]}: "
                             f"train it with tools/train_ssl_head.py")
    all_rows = attack_rows(attack_names, steps, bpda_steps, lambdas, eot_samples)
    out = Path(work_dir)
    if Path(data_root) == DATA:
        ensure_data()
    backend = build_backend(framework, Path(data_root), num_images, out, Path(checkpoint) if checkpoint else None,
                            preset)
    columns = {name: backend.defense(name) for name in defense_names}
    rows = {label: cfg for label, cfg in all_rows.items() if backend.supports(cfg)}
    skipped = [label for label in all_rows if label not in rows]
    start = time.perf_counter()
    logger.info("%d cells: %d attacks × %d defenses × %d seeds%s", len(rows) * len(columns) * len(seeds), len(rows),
                len(columns), len(seeds), f"; not applicable here: {', '.join(skipped)}" if skipped else "")
    cells: list[dict] = []
    for seed in seeds:
        for defense, defense_cfg in columns.items():
            attacked = []
            for attack, attack_cfg in rows.items():
                record_dir = out / "cells" / f"seed{seed}" / slug(defense) / slug(attack)
                cell = backend.cell(Cell(attack, with_seed(attack_cfg, seed)),
                                    Cell(defense, with_seed(defense_cfg, seed)), record_dir, resume=resume)
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
                if f"greedy_{backend.key}" in worst:
                    cells.append({"attack": GREEDY, "defense": defense, "seed": seed,
                                  backend.key: worst[f"greedy_{backend.key}"], "picks": worst["greedy_picks"]})
    elapsed = time.perf_counter() - start

    labels = list(rows) + [label for label in (WORST, GREEDY) if any(c["attack"] == label for c in cells)]
    value = {(c["attack"], c["defense"], c["seed"]): c[backend.key] for c in cells}
    csv_rows = [{"attack": c["attack"], "defense": c["defense"], "seed": c["seed"], backend.key: c[backend.key],
                 "seconds": c.get("seconds", float("nan"))} for c in cells]
    data = dict(framework=backend.framework, model=backend.model_name, metric=backend.key,
                metric_name=backend.metric, num_images=num_images, eps=EPS, settings=backend.settings, seeds=seeds,
                not_applicable=skipped, columns={k: v for k, v in columns.items()}, rows={k: v for k, v in rows.items()},
                table={label: {d: [value[(label, d, s)] for s in seeds] for d in columns} for label in labels},
                cells=[{k: v for k, v in c.items() if k != "per_image"} for c in cells], seconds=elapsed)
    REPORT.write(out, "robustness", data, csv_rows, command)
    return data


