"""compare_presets on Mask R-CNNs: rows in COCO mask AP, each setting's FPN levels read by the defense (and the
model's own restored), the settings of the demo's tuned config named as they are, and what a Mask R-CNN cannot
run refused before anything runs."""

from __future__ import annotations

import pytest

from equi_ext.detectron2 import load_config
from equi_ext.detectron2.modeling.meta_arch import equi_settings
from equi_ext.evaluation import presets
from equi_ext.evaluation.backends import Detectron2Backend
from equi_ext.evaluation.demo import D2_CONFIG

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


def test_the_d2_demo_setting_is_the_demo_configs_tuned_one():
    config = equi_settings(load_config(D2_CONFIG, ["EQUI.SYNTHETIC_ROOT", ""]))
    defense, levels = presets.defense_of(presets.SETTINGS["d2-demo"])
    tuned = {k: v for k, v in config["defense"].items() if k != "seed"}
    assert {k: v for k, v in defense.items() if k != "preset"} == tuned
    assert defense["preset"] == "default"  # what EQUI.PRESET None builds on
    assert levels == config["levels"]


@pytest.mark.parametrize("kwargs, message", [
    (dict(models=["deeplabv3-128", "mask-rcnn-r18-128"]), r"two frameworks \(detectron2, mmseg\)"),
    (dict(models=["mask-rcnn-r18-128"], attacks=["SEA-10-BPDA"]),
     r"attacks \['SEA-10-BPDA'\] need dense logits, which a Mask R-CNN does not have; valid here: PGD-20, "
     r"BPDA-10, APGD-10-BPDA"),
    (dict(models=["unet-64"], settings=["d2-demo"]), r"settings \['d2-demo'\] name FPN levels"),
])
def test_what_a_model_cannot_run_is_refused_before_anything_runs(kwargs, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        presets.compare_presets(work_dir=tmp_path, **kwargs)
    assert not list(tmp_path.iterdir())


def test_mask_rcnn_rows_are_in_mask_ap_with_each_settings_levels(tmp_path, monkeypatch):
    monkeypatch.setattr(presets, "ATTACKS", {"PGD-20": dict(type="pgd", eps=4, steps=1),
                                             "APGD-10-BPDA": dict(type="bpda", attack=dict(type="apgd", eps=4, steps=1))})
    monkeypatch.setitem(presets.SETTINGS, "d2-demo-t1", dict(presets.SETTINGS["d2-demo"], steps=1))
    levels_seen = []
    cell = Detectron2Backend.cell

    def spy(self, attack, defense, *args, **kwargs):
        levels_seen.append((defense[0], attack[0], list(self.model.levels)))
        return cell(self, attack, defense, *args, **kwargs)

    monkeypatch.setattr(Detectron2Backend, "cell", spy)
    data = presets.compare_presets(models=["mask-rcnn-r18-128"], settings=["d2-demo-t1"],
                                   attacks=["PGD-20", "APGD-10-BPDA"], num_images=2, batch=2, work_dir=tmp_path)
    assert data["metric"] == "mask AP"
    vanilla, tuned = data["rows"]
    for row in (vanilla, tuned):
        assert 0 <= row["worst"] <= min(row["PGD-20"], row["APGD-10-BPDA"]) + 1e-9
    assert tuned["recovered"] == pytest.approx((tuned["worst"] - vanilla["worst"]) / (vanilla["clean"] - vanilla["worst"]))
    assert tuned["ratio_batch1"] > 1 and tuned["ratio_batchB"] > 1
    # vanilla reads the config's levels (every one: the training config sets none); the setting its own
    assert {tuple(levels) for column, _, levels in levels_seen if column == "vanilla"} == {()}
    assert {tuple(levels) for column, _, levels in levels_seen if column == "d2-demo-t1"} == {("p2", "p3", "p4")}
    assert len(levels_seen) == 6  # clean and both attacks, per column
    page = (tmp_path / "presets.md").read_text()
    assert page.startswith("mask AP (%) on the first 2 images")
    assert f"| {tuned['model']} | tuned | d2-demo-t1 | {tuned['ratio_batch1']:.1f} |" in page
