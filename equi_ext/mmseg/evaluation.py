"""Evaluate one MMSeg model under a grid of attacks × defenses (paper Table 2 and Table 5).

Every cell is its own run of the runner's test loop and evaluator (``IoUMetric``), so the
numbers are exactly what ``tools/test.py`` would report for that configuration.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

from mmengine.config import Config
from mmengine.dist import get_rank
from mmengine.runner import Runner
from torch.utils.data import DataLoader, Subset

from ..cells import Cell, run_cell, runs_of
from ..core.checkpoints import load_weights
from ..core.metrics import greedy_worst_case, worst_case_per_image
from ..core.validation import SettingsError
from ..files import atomic_write_text
from ..pipeline import scenario_of, scenario_table
from ..reporting import fingerprint
from .cli import check_test_data
from .hooks import label_progress
from .metrics import EquiScoreMetric, PerImageIoUMetric, load_record
from .segmentor import build_equi_components, scenario


def evaluate_scenarios(cfg: Config, checkpoint: str | None, scenarios: list[str] | None = None) -> list[dict]:
    """Evaluate an MMSeg config under each scenario with its own test loop and evaluator (``IoUMetric``);
    write ``cfg.work_dir/equi_results.{md,json}`` (rank 0) and return one row per scenario: mIoU, aAcc, mAcc,
    the mean equivariance score over every process's images, images, seconds.

    ``checkpoint`` is loaded strictly (None: the config's initialisation, with a warning); ``scenarios``
    default to every one the config's ``test_cfg.defense`` / ``attack`` make meaningful.

    Raises:
        SettingsError: before anything runs: bad equi-ext settings in ``model.test_cfg``, unknown scenarios or
            ones that need a defense or attack the config does not set,
            a missing checkpoint or test data.
        CheckpointError: a checkpoint that does not fit the model.
    """
    test_cfg = cfg.model.get("test_cfg", {})
    try:
        pipeline, _ = build_equi_components(test_cfg)
    except (KeyError, ValueError, TypeError) as err:
        raise SettingsError.of(err, "bad equi-ext settings in model.test_cfg: ") from err
    scenarios = pipeline.scenarios(scenarios, {"defense": "model.test_cfg.defense", "attack": "model.test_cfg.attack"})
    if checkpoint is not None and not os.path.isfile(checkpoint):
        raise SettingsError(f"checkpoint {checkpoint!r} does not exist")
    check_test_data(cfg)
    runner = Runner.from_cfg(cfg)
    load_weights(runner.model, checkpoint, framework="MMEngine")
    score_metric(runner)
    rows = []
    for name in scenarios:
        runner.logger.info(f"equi-ext: evaluating scenario '{name}'")
        label_progress(runner, name)
        start = time.perf_counter()
        with scenario(runner.model, name, record_scores=True):
            metrics = runner.test()
        rows.append(dict(
            scenario=name,
            mIoU=float(metrics["mIoU"]), aAcc=float(metrics["aAcc"]), mAcc=float(metrics["mAcc"]),
            equivariance_score=metrics.get("equi/score"), images=int(metrics["equi/images"]),
            seconds=time.perf_counter() - start,
        ))
    if get_rank() != 0:
        return rows
    table = scenario_table(rows, {"mIoU": "mIoU", "aAcc": "aAcc", "mAcc": "mAcc"})
    atomic_write_text(os.path.join(cfg.work_dir, "equi_results.md"), table + "\n")
    settings = test_cfg.to_dict() if hasattr(test_cfg, "to_dict") else dict(test_cfg or {})
    atomic_write_text(os.path.join(cfg.work_dir, "equi_results.json"), json.dumps(
        dict(config=cfg.filename, checkpoint=checkpoint, test_cfg=settings, results=rows), indent=2, default=str))
    runner.logger.info("equi-ext results\n" + table)
    print(table)
    return rows


def per_image_metric(runner: Runner) -> PerImageIoUMetric | None:
    """The runner's ``PerImageIoUMetric``, if its test evaluator has one (after a test run)."""
    return next((m for m in runner.test_loop.evaluator.metrics if isinstance(m, PerImageIoUMetric)), None)


def score_metric(runner: Runner) -> EquiScoreMetric:
    """The runner's ``EquiScoreMetric``, added to its test evaluator if the config did not list one."""
    evaluator = runner.test_loop.evaluator
    metric = next((m for m in evaluator.metrics if isinstance(m, EquiScoreMetric)), None)
    if metric is None:
        metric = EquiScoreMetric()
        evaluator.metrics.append(metric)
    return metric


def evaluate_grid(runner: Runner, defenses: dict[str, Any], attacks: dict[str, Any],
                  on_row: Callable[[dict], Any] | None = None, record_scores: bool = True,
                  settings: dict[str, Any] | None = None) -> list[dict]:
    """Return one row per (attack, defense) cell: mIoU, mean and per-image equivariance score, seconds.

    ``defenses``/``attacks`` map a column/row label to a config (``None`` = no defense / clean); ``settings``
    are further ``test_cfg`` keys for every cell (``score``, ``feature_layer``); the model is left as it is
    (:func:`equi_ext.mmseg.scenario`). ``on_row`` is called with each row as its cell finishes.
    With a ``PerImageIoUMetric`` evaluator, each row also carries its ``per_image`` records.
    """
    scores = score_metric(runner)
    rows = []
    for attack_name, attack_cfg in attacks.items():
        for defense_name, defense_cfg in defenses.items():
            name = scenario_of(attack_cfg is not None, defense_cfg is not None)
            runner.logger.info(f"equi-ext grid: attack={attack_name} defense={defense_name}")
            label_progress(runner, f"{attack_name} / {defense_name}")
            start = time.perf_counter()
            with scenario(runner.model, name, record_scores=record_scores, **(settings or {}), defense=defense_cfg,
                          attack=attack_cfg):
                metrics = runner.test()
            rows.append(dict(attack=attack_name, defense=defense_name, mIoU=float(metrics["mIoU"]),
                             score=metrics.get("equi/score"), images=int(metrics["equi/images"]),
                             image_scores=list(scores.image_scores), seconds=time.perf_counter() - start))
            metric = per_image_metric(runner)
            if metric is not None:
                rows[-1]["per_image"] = list(metric.per_image)
            if on_row is not None:
                on_row(rows[-1])
    return rows


@contextlib.contextmanager
def corrupted_loading(runner: Runner, corruption: dict | None) -> Iterator[None]:
    """Within the block the runner's test images are corrupted as they are loaded: ``corruption``, e.g.
    ``dict(corruption='fog', severity=3)``, becomes an ``ImageCorruption`` right after ``LoadImageFromFile``
    (before any resize and the data preprocessor's normalisation); None changes nothing."""
    if corruption is None:
        yield
        return
    from mmcv.transforms import LoadImageFromFile

    from .transforms import ImageCorruption

    loader = runner.test_loop.dataloader
    if loader.num_workers > 0 and loader.persistent_workers:
        raise SettingsError("corrupting the test images needs a test dataloader without persistent_workers: "
                            "workers that outlive a run keep the pipeline they started with")
    transforms = loader.dataset.pipeline.transforms
    load = next((i for i, t in enumerate(transforms) if isinstance(t, LoadImageFromFile)), None)
    if load is None:
        raise SettingsError("corrupting the test images needs LoadImageFromFile in the test pipeline")
    transforms.insert(load + 1, ImageCorruption(**corruption))
    try:
        yield
    finally:
        del transforms[load + 1]


def evaluate_cell(runner: Runner, attack: Cell, defense: Cell, record_dir: str | os.PathLike,
                  *, resume: bool = False, corruption: dict | None = None, record_scores: bool = True) -> dict:
    """One (attack, defense) cell, image records written to ``record_dir`` as each image finishes; ``corruption``
    as :func:`corrupted_loading` takes it; ``record_scores`` as for :func:`evaluate_grid`.

    With ``resume``, images that already have a record are not run again. The cell's mIoU is
    always IoUMetric's over the records of all the runner's images, so an interrupted and
    resumed cell reports exactly what an uninterrupted one does (seeds are per image: see
    ``equi_ext.core.seeding.image_seed``). Returns an ``evaluate_grid`` row plus ``run_images``.
    """
    attack, defense = Cell(*attack), Cell(*defense)
    metric = per_image_metric(runner)
    if metric is None:
        raise ValueError("evaluate_cell needs test_evaluator=dict(type='PerImageIoUMetric') in the config")
    loop = runner.test_loop
    full = loop.dataloader
    images = [full.dataset.get_data_info(i)["img_path"] for i in range(len(full.dataset))]

    def run_images(todo: list[int]) -> float:
        # corrupt the dataset itself, before a resumed cell's loader wraps it in a Subset
        with corrupted_loading(runner, corruption):
            if len(todo) < len(images):
                loop.dataloader = DataLoader(Subset(full.dataset, todo), batch_size=full.batch_size,
                                             collate_fn=full.collate_fn, num_workers=0)
            metric.record_dir = str(record_dir)
            try:
                (row,) = evaluate_grid(runner, {defense.label: defense.cfg}, {attack.label: attack.cfg},
                                       record_scores=record_scores)
                return row["seconds"]
            finally:
                loop.dataloader, metric.record_dir = full, None

    stamp = dict(corruption=corruption, record_scores=record_scores, images=fingerprint(images),
                 data=fingerprint(runner.cfg.get("test_dataloader")), model=fingerprint(runner.model))
    return run_cell(attack, defense, images, record_dir, stamp=stamp, resume=resume, run_images=run_images,
                    score=lambda records: dict(mIoU=dataset_miou(metric, records)), read=load_record)


def dataset_miou(metric: PerImageIoUMetric, records: list[dict]) -> float:
    """IoUMetric's mIoU over per-image records pooled."""
    return float(metric.metrics_of([r["areas"] for r in records])["mIoU"])


def worst_case(runner: Runner, rows: list[dict]) -> dict:
    """mIoU over each image's worst attacked input among ``rows``, computed by the runner's
    ``PerImageIoUMetric``, two ways: ``mIoU`` / ``picks`` per image (lowest per-image IoU, ties: highest
    loss; AutoAttack's definition) and ``greedy_mIoU`` / ``greedy_picks`` searched for the lowest dataset
    mIoU (``equi_ext.core.metrics.greedy_worst_case``; never above the per-image one). Quote the lower."""
    metric = per_image_metric(runner)
    if metric is None or any("per_image" not in r for r in rows):
        raise ValueError("the per-image worst case needs test_evaluator=dict(type='PerImageIoUMetric') in the config")
    runs = runs_of(rows)
    picks = worst_case_per_image(runs)
    greedy_picks, greedy = greedy_worst_case(runs, lambda records: dataset_miou(metric, records))
    return dict(mIoU=dataset_miou(metric, [runs[name][i] for i, name in enumerate(picks)]), picks=picks,
                greedy_mIoU=greedy, greedy_picks=greedy_picks)


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
