"""equi_ext.evaluation.presets (tools/compare_presets.py): the model × preset table's numbers are those of its
cells, bad settings are refused before anything runs, and the page re-renders from its result."""

from __future__ import annotations

import dataclasses
import json

import pytest

from equi_ext.core.defense import PRESETS
from equi_ext.evaluation import presets

from .conftest import load_tool


@pytest.mark.parametrize("kwargs, message", [
    (dict(models=["deeplabv3-128", "resnet-9000"]), r"unknown models \['resnet-9000'\]; valid: deeplabv3-128, "),
    (dict(settings=["fast", "turbo"]), r"unknown settings \['turbo'\]; valid: paper, default, fast, mask_rcnn, reference, "),
    (dict(num_images=0), "num_images, batch and repeats must be >= 1; got 0, 16, 1"),
    (dict(attacks=["PGD-20", "FGSM"]), r"unknown attacks \['FGSM'\]; valid: PGD-20, BPDA-10, SEA-10-BPDA"),
    (dict(models=["deeplabv3-128", "mask-rcnn-r18-128"]), r"two frameworks \(detectron2, mmseg\)"),
    (dict(models=["mask-rcnn-r18-128"], attacks=["SEA-10-BPDA"]),
     r"attacks \['SEA-10-BPDA'\] need dense logits, which a Mask R-CNN does not have; valid here: PGD-20, "
     r"BPDA-10, APGD-10-BPDA"),
    (dict(models=["unet-64"], settings=["d2-demo"]), r"settings \['d2-demo'\] name FPN levels"),
])
def test_bad_settings_are_refused_before_anything_runs(kwargs, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        presets.compare_presets(work_dir=tmp_path, **kwargs)
    assert not list(tmp_path.iterdir())


def test_a_model_without_weights_is_named_with_how_to_train_it(tmp_path, monkeypatch):
    missing = dataclasses.replace(presets.ZOO["unet-64"], checkpoint=tmp_path / "none.pth")
    monkeypatch.setitem(presets.ZOO, "unet-64", missing)
    with pytest.raises(SystemExit, match=r"model unet-64: no weights at .*none.pth; train them with `python "
                                         r"tools/train.py .*fcn_unet-s4-c16_1xb8-4k_synthetic-64x64.py`"):
        load_tool("compare_presets").main(["--models", "unet-64", "--work-dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_the_table_is_computed_from_its_cells(tmp_path, monkeypatch, synthetic_val_root, assert_rerenders):
    monkeypatch.setattr(presets, "ensure_tune_data", lambda: synthetic_val_root)
    monkeypatch.setattr(presets, "ATTACKS", {"PGD-20": dict(type="pgd", eps=4, steps=1),
                                             "BPDA-10": dict(type="bpda", eps=4, steps=1)})
    tool = load_tool("compare_presets")
    data = tool.main(["--models", "deeplabv3-128", "--settings", "fast", "--attacks", "PGD-20,BPDA-10",
                      "--num-images", "2", "--batch", "2", "--work-dir", str(tmp_path)])
    vanilla, fast = data["rows"]
    assert (vanilla["defense"], fast["defense"]) == ("vanilla", "fast")
    for row in (vanilla, fast):  # the worst case over the two attacks is never above either
        assert row["worst"] <= min(row["PGD-20"], row["BPDA-10"]) + 1e-9
    assert fast["recovered"] == pytest.approx((fast["worst"] - vanilla["worst"]) / (vanilla["clean"] - vanilla["worst"]))
    assert fast["ratio_batch1"] > 1 and fast["ratio_batchB"] > 1  # a defense costs more than the prediction alone
    page = (tmp_path / "presets.md").read_text()
    assert (f"| {fast['model']} | tuned | fast | {fast['ratio_batch1']:.1f} | {fast['ratio_batchB']:.1f} | "
            f"{fast['clean']:.2f} | {fast['PGD-20']:.2f} | {fast['BPDA-10']:.2f} | {fast['worst']:.2f} | "
            f"{100 * fast['recovered']:.0f}% |") in page
    assert "- `fast`: " + ", ".join(f"{k} {v}" for k, v in PRESETS["fast"].items()) in page  # what ran, written out
    assert json.loads((tmp_path / "deeplabv3-128/cells/fast/setting.json").read_text()) == PRESETS["fast"]
    assert_rerenders(tool, tmp_path / "presets.json")


def test_a_setting_is_recorded_with_its_values():
    assert presets.resolved(dict(preset="fast")) == PRESETS["fast"]
    assert presets.resolved(dict(preset="fast", steps=9))["steps"] == 9
    assert presets.resolved(presets.SETTINGS["reference"]) == presets.SETTINGS["reference"]


def test_resume_refuses_records_of_other_values(tmp_path, monkeypatch):
    cell_dir = tmp_path / "deeplabv3-128" / "cells" / "fast"
    presets.record_values(cell_dir, dict(PRESETS["fast"], step_size=3.0))  # as if `fast` had another step before
    with pytest.raises(ValueError, match=r"cells/fast holds records of .*step_size\": 3.0.*resume in another"):
        presets.compare_presets(models=["deeplabv3-128"], settings=["fast"], work_dir=tmp_path, resume=True)
    presets.check_recorded_values(cell_dir, dict(PRESETS["fast"], step_size=3.0))  # the same values pass
    presets.check_recorded_values(tmp_path / "never-measured", PRESETS["fast"])


def test_recovered_share():
    assert presets.recovered_share(clean=80.0, worst_vanilla=20.0, worst_defended=50.0) == 0.5
    assert presets.recovered_share(clean=80.0, worst_vanilla=20.0, worst_defended=10.0) < 0


def test_the_page_states_the_criterion_over_the_tuned_models():
    def row(key, role, defense, clean, worst, recovered=None, ratio=None):
        return dict(model=key.upper(), key=key, role=role, defense=defense, clean=clean, worst=worst,
                    **{"PGD-20": worst + 1, "BPDA-10": worst + 2},
                    **({} if defense == "vanilla" else dict(recovered=recovered, ratio_batch1=ratio / 2,
                                                            ratio_batchB=ratio)))

    rows = [row("a", "tuned", "vanilla", 80.0, 20.0), row("a", "tuned", "fast", 78.5, 50.0, 0.5, 20.0),
            row("a", "tuned", "reference", 79.0, 56.0, 0.6, 90.0),
            row("b", "tuned", "vanilla", 60.0, 10.0), row("b", "tuned", "fast", 56.0, 30.0, 0.4, 30.0),
            row("c", "held back", "vanilla", 70.0, 5.0), row("c", "held back", "fast", 70.0, 5.0, 0.0, 10.0)]
    page = presets.render(dict(num_images=4, batch=16, eps=4.0, rows=rows))
    assert "| fast | 40% | 4.00 | 30.0 |" in page  # the held-back model's 0% and clean cost do not count
    assert "| reference | 60% | 1.00 | 90.0 |" in page
    # fast costs 4 clean points on b; the reference, not measured on b, cannot be chosen
    for preset, budget in (("fast", 40), ("default", 100)):
        assert (f"Criterion for `{preset}` (≤ {budget}× at batch 16, clean cost ≤ 3 points on every tuned model): "
                "no setting measured here meets it.") in page
    with_reference_on_b = rows[:5] + [row("b", "tuned", "reference", 58.5, 32.0, 0.45, 95.0)] + rows[5:]
    chosen = presets.render(dict(num_images=4, batch=16, eps=4.0, rows=with_reference_on_b))
    assert "| reference | 45% | 1.50 | 95.0 |" in chosen
    assert "Criterion for `default` (≤ 100× at batch 16, clean cost ≤ 3 points on every tuned model): " \
           "**reference**, lowest recovered share 45%." in chosen
    assert "Criterion for `fast` (≤ 40× at batch 16, clean cost ≤ 3 points on every tuned model): no setting" in chosen
    assert "A (tuned): `fast` recovers 50%, 83% of the reference's 60% (target ≥ 60%), at 20.0× with batch 16" in page
    assert "B (tuned): `fast`" not in page  # no reference measured on b
    held_back = presets.render(dict(num_images=4, batch=16, eps=4.0, rows=rows[-2:]))
    assert "lowest recovered" not in held_back and "| C | held back | fast |" in held_back
