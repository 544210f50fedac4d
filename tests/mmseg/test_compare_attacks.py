"""SEA against the fixed-step baselines: the tuning run picks each baseline's best step, the reported run uses it."""

from __future__ import annotations

import json

import pytest

from equi_ext.attacks.apgd import SEA_LOSSES
from equi_ext.core.validation import SettingsError
from equi_ext.evaluation import compare_attacks as comparison
from equi_ext.evaluation.compare_attacks import BASELINES, STEP_FRACTIONS, compare_attacks, tuned_steps

from .conftest import REPO, load_tool


def test_the_tuning_run_picks_each_baselines_lowest_step_and_the_reported_run_reuses_it(
        synthetic_val_root, tmp_path, monkeypatch, assert_rerenders):
    monkeypatch.setattr(comparison, "ensure_tune_data", lambda: synthetic_val_root)
    monkeypatch.setattr(comparison, "ensure_data", lambda: synthetic_val_root)
    tune = compare_attacks(split="tune", num_images=1, steps=1, eps=2.0, work_dir=tmp_path / "tune")
    for name in BASELINES:
        scores = {f * 2.0: tune["mIoU"][f"{name}-3 step {f * 2.0:g}"] for f in STEP_FRACTIONS}
        assert tune["chosen_steps"][name] == min(scores, key=scores.get)
    greedy = tune["mIoU"]["SEA-1, greedy mIoU search over its losses"]
    assert greedy <= min(tune["mIoU"][f"SEA-1 {loss} alone"] for loss in SEA_LOSSES) + 1e-9
    assert tune["sea_margin"] == pytest.approx(
        min(tune["mIoU"][f"{n}-3 step {tune['chosen_steps'][n]:g}"] for n in BASELINES)
        - min(tune["mIoU"]["SEA-1"], greedy))
    steps = tuned_steps(tmp_path / "tune/compare_attacks.json", 2.0, 1)
    assert steps == tune["chosen_steps"]
    val = compare_attacks(split="val", num_images=1, steps=1, eps=2.0, work_dir=tmp_path / "val", step_sizes=steps,
                          command="python tools/compare_attacks.py --split val --num-images 1 --steps 1 --eps 2")
    assert set(val["mIoU"]) == {"clean", "SEA-1", *(f"SEA-1 {loss} alone" for loss in SEA_LOSSES),
                                "SEA-1, greedy mIoU search over its losses",
                                *(f"{n}-3 step {steps[n]:g}" for n in BASELINES)}
    assert val["mIoU"]["SEA-1"] == tune["mIoU"]["SEA-1"]  # same images here, same seeds: same attack
    with pytest.raises(SettingsError, match=r"is a 'tune' run at eps 2.0 and steps 1; this run needs a 'tune' run at "
                                            r"eps 4 and steps 1"):
        tuned_steps(tmp_path / "tune/compare_attacks.json", 4.0, 1)
    assert json.loads((tmp_path / "val/compare_attacks.json").read_text())["split"] == "val"
    assert_rerenders(load_tool("compare_attacks"), tmp_path / "val/compare_attacks.json")


def test_bad_settings_are_refused_before_anything_runs(tmp_path):
    with pytest.raises(SettingsError, match="split must be 'tune' or 'val'; got 'test'"):
        compare_attacks(split="test", num_images=1, steps=1, work_dir=tmp_path)
    with pytest.raises(SettingsError, match=r"no tuned step size for \['pgd', 'segpgd', 'cospgd'\]"):
        compare_attacks(split="val", num_images=1, steps=1, work_dir=tmp_path)
    with pytest.raises(SettingsError, match="tuning report .* does not exist"):
        tuned_steps(tmp_path / "missing.json", 4.0, 10)


@pytest.mark.numerics
def test_sea_beats_segpgd_at_equal_cost_on_the_demo_model(tmp_path):
    """SEA-30 (90 forward/backward passes) against SegPGD with 90 iterations at the step the committed tuning run
    chose, on the undefended demo model, first 8 tuning images at ε = 1, where no attack reaches the floor.
    Measured 6.12 against 9.82 mIoU (docs/benchmarks/compare_attacks/tune-eps1-steps30.md); a point is the issue's
    margin. CosPGD is not held to it: on this non-robust model it ties SEA (6.02 there; see the page)."""
    from equi_ext.data.synthetic import generate_dataset
    from equi_ext.evaluation.backends import MMSegBackend

    step = tuned_steps(REPO / "docs/benchmarks/compare_attacks/tune-eps1-steps30.json", 1.0, 30)["segpgd"]

    tune = tmp_path / "tune"
    generate_dataset(tune, seed=1, image_size=128, num_train=0, num_val=8)  # the tuning split's first 8 images
    backend = MMSegBackend(tune, 8, tmp_path)
    miou = {name: backend.cell((name, cfg), ("vanilla", None), tmp_path / name)["mIoU"]
            for name, cfg in (("sea", comparison.sea(30, eps=1.0)),
                              ("segpgd", comparison.baseline("segpgd", 30, step, eps=1.0)))}
    assert miou["sea"] <= miou["segpgd"] - 1.0, miou


ROBUST_CHECKPOINT = REPO / "checkpoints/deeplabv3_r18c16-d8_synthetic-128x128_adv-pgd2-eps4.pth"
ROBUST_TUNING = REPO / "docs/benchmarks/compare_attacks/robust-tune-eps4-steps100.json"
IMAGES = 6


def test_sea_beats_segpgd_and_cospgd_at_equal_cost_on_the_robust_model(tmp_path):
    """On the adversarially trained demo DeepLabV3 (no attack reaches the floor there), ε = 4: SEA with 100 APGD
    iterations per loss, reported as its authors do (the greedy search for the lowest dataset mIoU over its three
    losses' outputs), against SegPGD and CosPGD with 300 iterations each at the step the committed tuning run
    chose. On the first 6 tuning images SEA must be a point below both: measured 14.07 against 18.14 (SegPGD)
    and 17.49 (CosPGD) in the committed tuning run's records (on all 8 of its images 15.19 against 19.17 and
    18.41). A wrong SEA (e.g. APGD's step control or a loss off) or a weaker merge rule loses that margin."""
    from equi_ext.data.synthetic import generate_dataset
    from equi_ext.evaluation.backends import MMSegBackend

    report = json.loads(ROBUST_TUNING.read_text())
    steps = tuned_steps(ROBUST_TUNING, 4.0, 100)
    tune = tmp_path / "tune"
    generate_dataset(tune, seed=1, image_size=128, num_train=0, num_val=IMAGES)  # the tuning split's first images
    backend = MMSegBackend(tune, IMAGES, tmp_path, ROBUST_CHECKPOINT)

    def run(name, cfg):
        return backend.cell((name, cfg), ("vanilla", None), tmp_path / name)

    per_loss = [run(loss, cfg) for loss, cfg in comparison.sea_per_loss(100, 4.0, report["sea_class_weights"]).items()]
    sea = backend.worst_case(per_loss)["greedy_mIoU"]
    baselines = {name: run(name, comparison.baseline(name, 100, steps[name], 4.0))["mIoU"]
                 for name in ("segpgd", "cospgd")}
    assert sea <= min(baselines.values()) - 1.0, (sea, baselines)


def test_pages_name_the_weights_they_were_given():
    from pathlib import Path

    from equi_ext.evaluation.backends import named_weights
    from equi_ext.evaluation.demo import CHECKPOINT

    assert named_weights("demo DeepLabV3", None, CHECKPOINT) == "demo DeepLabV3"
    assert named_weights("demo DeepLabV3", Path(str(CHECKPOINT)), CHECKPOINT) == "demo DeepLabV3"
    assert named_weights("demo DeepLabV3", ROBUST_CHECKPOINT.relative_to(REPO), CHECKPOINT) == (
        "DeepLabV3 with the weights checkpoints/deeplabv3_r18c16-d8_synthetic-128x128_adv-pgd2-eps4.pth")
