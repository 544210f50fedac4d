"""Evaluate one MMSeg model under a grid of attacks × defenses (paper Table 2 and Table 5).

Every cell is its own run of the runner's test loop and evaluator (``IoUMetric``), so the
numbers are exactly what ``tools/test.py`` would report for that configuration.
"""

from __future__ import annotations

import time
from typing import Any

from mmengine.runner import Runner

from ..core.metrics import worst_case_per_image
from .metrics import PerImageIoUMetric
from .segmentor import configure, set_scenario


def per_image_metric(runner: Runner) -> PerImageIoUMetric | None:
    """The runner's ``PerImageIoUMetric``, if its test evaluator has one (after a test run)."""
    return next((m for m in runner.test_loop.evaluator.metrics if isinstance(m, PerImageIoUMetric)), None)


def evaluate_grid(runner: Runner, defenses: dict[str, Any], attacks: dict[str, Any]) -> list[dict]:
    """Return one row per (attack, defense) cell: mIoU, mean and per-image equivariance score, seconds.

    ``defenses``/``attacks`` map a column/row label to a config (``None`` = no defense / clean).
    With a ``PerImageIoUMetric`` evaluator, each row also carries its ``per_image`` records.
    """
    rows = []
    for attack_name, attack_cfg in attacks.items():
        for defense_name, defense_cfg in defenses.items():
            configure(runner.model, defense=defense_cfg, attack=attack_cfg)
            scenario = ("attacked" if attack_cfg is not None else "clean") if defense_cfg is None else (
                "defended" if attack_cfg is not None else "clean_defended")
            rt = set_scenario(runner.model, scenario, record_scores=True)
            runner.logger.info(f"equi-ext grid: attack={attack_name} defense={defense_name}")
            start = time.perf_counter()
            metrics = runner.test()
            rows.append(dict(attack=attack_name, defense=defense_name, mIoU=float(metrics["mIoU"]),
                             score=sum(rt.scores) / max(len(rt.scores), 1), images=len(rt.scores),
                             image_scores=list(rt.scores), seconds=time.perf_counter() - start))
            metric = per_image_metric(runner)
            if metric is not None:
                rows[-1]["per_image"] = list(metric.per_image)
    return rows


def worst_case(runner: Runner, rows: list[dict]) -> dict:
    """mIoU over each image's worst attacked input among ``rows`` (lowest per-image IoU, ties:
    highest loss), computed by the runner's ``PerImageIoUMetric``; and which row each image took."""
    metric = per_image_metric(runner)
    if metric is None or any("per_image" not in r for r in rows):
        raise ValueError("the per-image worst case needs test_evaluator=dict(type='PerImageIoUMetric') in the config")
    runs = {f"{r['attack']} / {r['defense']}": r["per_image"] for r in rows}
    picks = worst_case_per_image(runs)
    areas = [runs[name][i]["areas"] for i, name in enumerate(picks)]
    return dict(mIoU=float(metric.metrics_of(areas)["mIoU"]), picks=picks)


def grid_table(rows: list[dict], value: str = "mIoU", fmt: str = "{:.2f}") -> str:
    """Markdown table: rows = attacks, columns = defenses."""
    attacks = list(dict.fromkeys(r["attack"] for r in rows))
    defenses = list(dict.fromkeys(r["defense"] for r in rows))
    cell = {(r["attack"], r["defense"]): r[value] for r in rows}
    lines = ["| attack | " + " | ".join(defenses) + " |", "|---" * (len(defenses) + 1) + "|"]
    for a in attacks:
        lines.append(f"| {a} | " + " | ".join(fmt.format(cell[(a, d)]) if (a, d) in cell else "—"
                                              for d in defenses) + " |")
    return "\n".join(lines)
