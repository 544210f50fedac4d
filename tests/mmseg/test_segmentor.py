"""The EncoderDecoder wrapper: off means stock, on means attack/defend inside MMEngine's test loop."""

from __future__ import annotations

import copy
import hashlib

import pytest
import torch
from mmengine.config import Config
from mmengine.runner import Runner

import equi_ext.mmseg as equi_mmseg

from .conftest import DEMO_CONFIG


def demo_cfg(root, work_dir, n=2, **test_cfg):
    cfg = Config.fromfile(str(DEMO_CONFIG))
    cfg.work_dir = str(work_dir)
    cfg.test_dataloader.dataset.data_root = str(root)
    cfg.test_dataloader.dataset.indices = n
    cfg.test_dataloader.num_workers = 0
    cfg.test_dataloader.persistent_workers = False
    cfg.model.test_cfg.update(test_cfg)
    cfg.default_hooks.pop("visualization")
    return cfg


def fingerprint(model):
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().numpy().tobytes())
    return h.hexdigest(), [p.requires_grad for p in model.parameters()], [m.training for m in model.modules()]


def predict_batch(runner, n=2):
    model = runner.model
    model.eval()
    batch = next(iter(runner.build_dataloader(runner.cfg.test_dataloader)))
    data = model.data_preprocessor(copy.deepcopy(batch), False)
    with torch.no_grad():
        return [s.seg_logits.data for s in model.predict(data["inputs"], data["data_samples"])]


def test_no_equi_settings_and_scoring_alone_are_bit_identical_to_stock(synthetic_val_root, tmp_path):
    runner = Runner.from_cfg(demo_cfg(synthetic_val_root, tmp_path))
    stock = predict_batch(runner)
    assert getattr(runner.model, "_equi_runtime", None) is None  # wrapper stayed out of the way
    equi_mmseg.set_scenario(runner.model, "clean", record_scores=True)
    scored = predict_batch(runner)
    for a, b in zip(stock, scored):
        assert torch.equal(a, b)
    assert len(equi_mmseg.runtime(runner.model).scores) == len(stock) == 1  # one image per test batch


def test_defense_none_reproduces_vanilla_exactly(synthetic_val_root, tmp_path):
    vanilla = Runner.from_cfg(demo_cfg(synthetic_val_root, tmp_path / "a"))
    with_none = Runner.from_cfg(demo_cfg(synthetic_val_root, tmp_path / "b", defense="none"))
    with_none.model.load_state_dict(vanilla.model.state_dict())
    assert vanilla.test() == with_none.test()


def test_config_with_custom_imports_defends_under_plain_runner(synthetic_val_root, tmp_path):
    """The stock-tool path: no tools/test.py, only custom_imports in the config."""
    cfg = demo_cfg(synthetic_val_root, tmp_path, defense=dict(type="equi", steps=2, transforms=["hflip"]),
                   attack=dict(type="pgd", eps=4, steps=2))
    assert "equi_ext.mmseg" in cfg.custom_imports["imports"]
    runner = Runner.from_cfg(cfg)
    runner.model.eval()  # MMEngine's test loop switches to eval itself and leaves it so
    before = fingerprint(runner.model)
    metrics = runner.test()
    assert "mIoU" in metrics
    assert equi_mmseg.runtime(runner.model).pipeline.attack_cfg["type"] == "pgd"
    assert fingerprint(runner.model) == before  # weights, buffers, flags untouched by attack + defense
    assert torch.is_grad_enabled()  # the test loop's no_grad did not leak out, nor did enable_grad


def test_attack_and_defense_change_predictions_within_budget(synthetic_val_root, tmp_path):
    runner = Runner.from_cfg(demo_cfg(synthetic_val_root, tmp_path, defense=dict(type="equi", steps=2, eps_v=6,
                                                                                   transforms=["hflip"]),
                                      attack=dict(type="pgd", eps=4, steps=2)))
    model = runner.model
    model.eval()
    batch = next(iter(runner.build_dataloader(runner.cfg.test_dataloader)))
    data = model.data_preprocessor(copy.deepcopy(batch), False)
    seen = []
    stock = model.inference

    def spy(inputs, metas):
        seen.append(inputs.detach().clone())
        return stock(inputs, metas)

    model.inference = spy
    try:
        with torch.no_grad():
            model.predict(data["inputs"], data["data_samples"])
    finally:
        del model.inference
    pixels = equi_mmseg.runtime(model).pixels
    final = pixels.to_pixels(seen[-1])
    clean = pixels.to_pixels(data["inputs"])
    assert 0 < (final - clean).abs().max() <= 4 + 6 + 1e-3
    assert final.min() >= 0 and final.max() <= 255


def test_sliding_window_mode_is_defended(synthetic_val_root, tmp_path):
    cfg = demo_cfg(synthetic_val_root, tmp_path, mode="slide", crop_size=(64, 64), stride=(48, 48),
                   defense=dict(type="equi", steps=1, transforms=["hflip"]), attack=dict(type="pgd", eps=4, steps=1))
    runner = Runner.from_cfg(cfg)
    equi_mmseg.set_scenario(runner.model, "defended", record_scores=True)
    metrics = runner.test()
    assert "mIoU" in metrics and len(equi_mmseg.runtime(runner.model).scores) == 2


def test_scenario_names_are_checked(synthetic_val_root, tmp_path):
    runner = Runner.from_cfg(demo_cfg(synthetic_val_root, tmp_path, defense="equi"))
    with pytest.raises(ValueError, match="scenario must be one of"):
        equi_mmseg.set_scenario(runner.model, "sneaky")


@pytest.mark.parametrize("defense", [dict(type="random", eps_v=4),
                                     dict(type="detect_then_defend", threshold=1.0, defense=dict(type="equi", steps=1)),
                                     dict(type="invariance", steps=1)])
def test_baseline_defenses_are_selectable_by_name(synthetic_val_root, tmp_path, defense):
    runner = Runner.from_cfg(demo_cfg(synthetic_val_root, tmp_path, n=1, defense=defense))
    equi_mmseg.set_scenario(runner.model, "clean_defended", record_scores=True)
    assert "mIoU" in runner.test()
    assert type(equi_mmseg.runtime(runner.model).defense).__name__ in {
        "RandomNoiseDefense", "DetectThenDefend", "InvarianceDefense"}
