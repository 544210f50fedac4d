"""compare_presets on Mask R-CNNs: rows in COCO mask AP, each setting's FPN levels read by the defense (and the
model's own restored), the settings of the demo's tuned config named as they are, a missing checkpoint named with
how to train it (what a Mask R-CNN cannot run is refused in tests/mmseg/test_presets.py)."""

from __future__ import annotations

import dataclasses

import pytest

from equi_ext.detectron2 import load_config
from equi_ext.detectron2.config import equi_settings
from equi_ext.evaluation import presets, speed
from equi_ext.evaluation.backends import Detectron2Backend
from equi_ext.evaluation.demo import D2_CONFIG

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


def test_the_d2_demo_setting_is_the_demo_configs_tuned_one():
    config = equi_settings(load_config(D2_CONFIG, ["EQUI.SYNTHETIC_ROOT", ""]))
    defense, levels = presets.defense_of(presets.SETTINGS["d2-demo"])
    assert defense == {"type": "equi", "preset": "mask_rcnn"}
    # the demo config writes the preset's values out: each equal to the preset's
    written = {k: v for k, v in config["defense"].items() if k not in ("type", "seed")}
    assert presets.resolved(written) == presets.resolved(presets.SETTINGS["mask_rcnn"])
    assert len(written) > 1 and levels == config["levels"] == ["p2", "p3", "p4"]


def test_a_config_that_sets_no_defense_values_gets_the_tuned_ones_on_the_three_finest_levels():
    from detectron2.layers import ShapeSpec

    from equi_ext.detectron2.modeling.objective import MaskRCNNObjective

    training_config = presets.ZOO["mask-rcnn-r18-128"].config
    settings = equi_settings(load_config(training_config, ["EQUI.DEFENSE", "equi", "EQUI.SYNTHETIC_ROOT", ""]))
    defense, levels = presets.defense_of(presets.SETTINGS["d2-demo"])
    assert settings["defense"] == {**defense, "seed": 0}
    assert settings["levels"] == []  # read as the three finest outputs: p2–p4 on an FPN, a C4 backbone's one

    def backbone_with(shapes):
        return type("Model", (), {"backbone": type("Backbone", (), {"output_shape": lambda self: shapes})()})()

    fpn = {name: ShapeSpec(channels=8, stride=2 ** int(name[1])) for name in ("p6", "p4", "p5", "p3", "p2")}
    assert MaskRCNNObjective(backbone_with(fpn), None).levels == levels == ["p2", "p3", "p4"]
    assert MaskRCNNObjective(backbone_with({"res4": ShapeSpec(channels=8, stride=16)}), None).levels == ["res4"]
    # a named preset replaces the defaults (only what the config sets goes with it)
    named = equi_settings(load_config(training_config, ["EQUI.DEFENSE", "equi", "EQUI.PRESET", "fast",
                                                        "EQUI.SYNTHETIC_ROOT", ""]))
    assert named["defense"] == {"type": "equi", "preset": "fast", "seed": 0}


def test_a_mask_rcnn_without_weights_is_named_with_how_to_train_it(tmp_path, monkeypatch):
    missing = dataclasses.replace(presets.ZOO["mask-rcnn-r34-128"], checkpoint=tmp_path / "none.pth")
    monkeypatch.setitem(presets.ZOO, "mask-rcnn-r34-128", missing)
    with pytest.raises(ValueError, match=r"model mask-rcnn-r34-128: no weights at .*none.pth; train them with `python "
                                         r"tools/train_net.py --config-file .*mask_rcnn_R34_FPN_synthetic-128x128.yaml`"):
        presets.compare_presets(models=["mask-rcnn-r34-128"], work_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_mask_rcnn_rows_are_in_mask_ap_with_each_settings_levels(tmp_path, monkeypatch):
    monkeypatch.setattr(presets, "ATTACKS", {"PGD-20": dict(type="pgd", eps=4, steps=1),
                                             "APGD-10-BPDA": dict(type="bpda", attack=dict(type="apgd", eps=4, steps=1))})
    monkeypatch.setitem(presets.SETTINGS, "d2-demo-t1", dict(presets.SETTINGS["d2-demo"], steps=1))
    monkeypatch.setitem(presets.SETTINGS, "fast-t1", dict(preset="fast", steps=1))
    from equi_ext.pipeline import active_run

    levels_seen, timed_levels = [], []
    cell, timing = Detectron2Backend.cell, speed.alternating_detectron2_predictions

    def cell_spy(self, attack, defense, *args, **kwargs):
        levels_seen.append((defense[0], tuple(active_run(self.model).views.get("levels", self.model.levels))))
        return cell(self, attack, defense, *args, **kwargs)

    def timing_spy(model, batches, defense, levels, repeats):
        timed_levels.append(tuple(levels))
        return timing(model, batches, defense, levels, repeats)

    monkeypatch.setattr(Detectron2Backend, "cell", cell_spy)
    monkeypatch.setattr(speed, "alternating_detectron2_predictions", timing_spy)
    data = presets.compare_presets(models=["mask-rcnn-r18-128"], settings=["d2-demo-t1", "fast-t1"],
                                   attacks=["PGD-20", "APGD-10-BPDA"], num_images=2, batch=2, work_dir=tmp_path)
    assert data["metric"] == "mask AP"
    vanilla, tuned, fast = data["rows"]
    for row in (vanilla, tuned, fast):
        assert 0 <= row["worst"] <= min(row["PGD-20"], row["APGD-10-BPDA"]) + 1e-9
    assert tuned["recovered"] == pytest.approx((tuned["worst"] - vanilla["worst"]) / (vanilla["clean"] - vanilla["worst"]))
    assert tuned["ratio_batch1"] > 1 and tuned["ratio_batchB"] > 1
    # vanilla and a setting without levels read every backbone output, the tuned setting its own, in its cells and
    # its timing
    every = ("p2", "p3", "p4", "p5", "p6")
    assert levels_seen == [(column, levels) for column, levels in
                           (("vanilla", every), ("d2-demo-t1", ("p2", "p3", "p4")), ("fast-t1", every)) for _ in range(3)]
    assert timed_levels == [("p2", "p3", "p4")] * 2 + [every] * 2  # batch 1 and batch 2, per setting
    page = (tmp_path / "presets.md").read_text()
    assert page.startswith("mask AP (%) on the first 2 images")
    assert f"| {tuned['model']} | tuned | d2-demo-t1 | {tuned['ratio_batch1']:.1f} |" in page


def test_the_real_size_mask_rcnn_is_timed_per_defense_step():
    case = speed.real_size_detectron2_case(size=(96, 128))  # the speed tool's 800×1333, small enough for a test
    assert case.name == "Detectron2 Mask R-CNN R50-FPN (96×128, random weights)"
    rows = speed.bench_per_step(case, ["fast"], speed.Meter())
    assert [r["what"].split(":")[0] for r in rows] == ["vanilla forward", "defended (fast", "defended (fast, chunked"]
    assert all(r["ratio"] > 1 for r in rows[1:]) and all(r["peak_mib"] is not None for r in rows)
