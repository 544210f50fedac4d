"""tools/benchmark_robustness.py: per-image records, --resume after a kill, seeds, the table files."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from .conftest import REPO, load_tool

ARGS = ["--num-images", "8", "--defenses", "equivariance", "--attacks", "clean,pgd", "--steps", "3"]


def _cell_dir(work, seed=0):
    return work / "cells" / f"seed{seed}" / "equivariance" / "PGD-3"


def test_killed_and_resumed_run_matches_an_uninterrupted_one(synthetic_val_root, tmp_path, assert_rerenders):
    """A run killed (SIGKILL) after a few images keeps only whole records; ``--resume`` runs just
    the missing images and ends with the uninterrupted run's numbers, image by image."""
    tool = load_tool("benchmark_robustness")
    data = ["--data-root", str(synthetic_val_root)]
    killed = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, str(REPO / "tools/benchmark_robustness.py"), *ARGS, *data,
                             "--seeds", "0", "--work-dir", str(killed)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if len(list(_cell_dir(killed).glob("*.json"))) >= 3:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it could be killed: {proc.stderr.read()[-2000:]}"
    written = sorted(_cell_dir(killed).glob("*.json"))
    assert 3 <= len(written) < 8
    for path in written:
        json.loads(path.read_text())  # whole records only (temp file + rename)

    resumed = tool.main([*ARGS, *data, "--seeds", "0", "--work-dir", str(killed), "--resume"])
    run_images = {(c["attack"], c["defense"]): c.get("run_images") for c in resumed["cells"]}
    assert run_images[("clean", "equivariance")] == 0  # the clean cell had finished
    assert run_images[("PGD-3", "equivariance")] == 8 - len(written)

    full = tool.main([*ARGS, *data, "--seeds", "0,1", "--work-dir", str(tmp_path / "full")])
    for label in resumed["table"]:
        assert resumed["table"][label]["equivariance"] == [full["table"][label]["equivariance"][0]], label
    for path in _cell_dir(tmp_path / "full").glob("*.json"):
        assert json.loads(path.read_text()) == json.loads((_cell_dir(killed) / path.name).read_text())
    # The seed is the run's: seed 1 draws another random start and other defense noise.
    assert full["table"]["PGD-3"]["equivariance"][0] != full["table"]["PGD-3"]["equivariance"][1]

    lines = list(csv.DictReader((tmp_path / "full/robustness.csv").open()))
    worst = ("worst case (per image)", "worst case (greedy, dataset metric)")
    assert {(r["attack"], r["seed"]) for r in lines} == {(a, s) for a in ("clean", "PGD-3", *worst) for s in ("0", "1")}
    for seed in range(2):  # the greedy search starts from the per-image picks: never above them
        assert full["table"][worst[1]]["equivariance"][seed] <= full["table"][worst[0]]["equivariance"][seed] + 1e-9
    md = (tmp_path / "full/robustness.md").read_text()
    mean = sum(full["table"]["PGD-3"]["equivariance"]) / 2
    assert f"| PGD-3 | {mean:.2f} ± " in md
    assert_rerenders(tool, tmp_path / "full/robustness.json")


def test_bad_arguments_are_named(tmp_path):
    tool = load_tool("benchmark_robustness")
    with pytest.raises(SystemExit, match="unknown defense"):
        tool.main(["--defenses", "equivariance,magic", "--work-dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="checkpoint .* does not exist"):
        tool.main(["--checkpoint", str(tmp_path / "missing.pth"), "--work-dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="--seeds takes integers"):
        tool.main(["--seeds", "0,x", "--work-dir", str(tmp_path)])
    (tmp_path / "other.json").write_text('{"rows": {}}')
    with pytest.raises(SystemExit, match="is not a result of this tool"):
        tool.main(["--render", str(tmp_path / "other.json")])


def test_resume_refuses_records_made_with_other_settings(synthetic_val_root, tmp_path):
    """A cell's record folder is stamped with what its numbers depend on: resuming it with another ε (or other
    weights, images, defense) would pool two experiments into one mIoU, so it is refused, naming what differs; a
    run without --resume replaces the old records, and a resume with the same settings runs nothing again."""
    from equi_ext.core.validation import SettingsError
    from equi_ext.evaluation.demo import build_demo_runner
    from equi_ext.mmseg.evaluation import evaluate_cell

    runner = build_demo_runner(synthetic_val_root, 2, tmp_path / "runs",
                               test_evaluator=dict(type="PerImageIoUMetric", iou_metrics=["mIoU"]))
    cell = tmp_path / "cells/PGD"
    eps4, eps8 = ("PGD", dict(type="pgd", eps=4, steps=1)), ("PGD", dict(type="pgd", eps=8, steps=1))
    first = evaluate_cell(runner, eps4, ("vanilla", None), cell)
    assert first["run_images"] == 2
    assert evaluate_cell(runner, eps4, ("vanilla", None), cell, resume=True)["run_images"] == 0
    with pytest.raises(SettingsError, match=r"cannot resume from .*cells/PGD.*other settings \(attack differ\)"):
        evaluate_cell(runner, eps8, ("vanilla", None), cell, resume=True)
    with pytest.raises(SettingsError, match=r"\(defense differ\)"):
        evaluate_cell(runner, eps4, ("equi", dict(type="equi", preset="fast")), cell, resume=True)
    other_weights = next(runner.model.parameters())
    with torch.no_grad():
        other_weights.add_(1.0)
        try:
            with pytest.raises(SettingsError, match=r"\(model differ\)"):
                evaluate_cell(runner, eps4, ("vanilla", None), cell, resume=True)
        finally:
            other_weights.sub_(1.0)
    replaced = evaluate_cell(runner, eps8, ("vanilla", None), cell)  # no --resume: the ε = 4 records go
    assert replaced["run_images"] == 2
    assert evaluate_cell(runner, eps8, ("vanilla", None), cell, resume=True)["run_images"] == 0
    (cell / ".cell_settings").unlink()  # records from before stamps existed
    with pytest.raises(SettingsError, match="carry no settings stamp"):
        evaluate_cell(runner, eps8, ("vanilla", None), cell, resume=True)


def test_evaluation_sets_no_attribute_on_the_model(synthetic_val_root, tmp_path, attribute_writes):
    """What a cell or a scenario evaluates travels in its run (``EquiRun``), not on the model: not even its
    ``test_cfg`` changes."""
    from equi_ext.evaluation.demo import build_demo_runner
    from equi_ext.mmseg.evaluation import evaluate_cell, evaluate_grid
    from equi_ext.pipeline import CONFIGURED_RUN, active_run

    runner = build_demo_runner(synthetic_val_root, 1, tmp_path / "runs",
                               test_evaluator=dict(type="PerImageIoUMetric", iou_metrics=["mIoU"]))
    model = runner.model
    test_cfg = model.test_cfg.to_dict()
    written = attribute_writes(model)
    evaluate_cell(runner, ("PGD", dict(type="pgd", eps=4, steps=1)), ("equi", dict(type="equi", preset="fast", steps=1)),
                  tmp_path / "cell")
    evaluate_grid(runner, {"equi": dict(type="equi", steps=1)}, {"clean": None},
                  settings=dict(score="invariance", feature_layer="backbone.1"))
    assert set(written) <= {"training"} and model.test_cfg.to_dict() == test_cfg
    assert active_run(model) is CONFIGURED_RUN
