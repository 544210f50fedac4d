"""The EncoderDecoder wrapper: off means stock, on means attack/defend inside MMEngine's test loop."""

from __future__ import annotations

import copy
import dataclasses
import hashlib

import pytest
import torch
from mmengine.config import Config
from mmengine.runner import Runner

import equi_ext.mmseg as equi_mmseg
from equi_ext.pipeline import running

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


def predict_samples(runner):
    model = runner.model
    model.eval()
    batch = next(iter(runner.build_dataloader(runner.cfg.test_dataloader)))
    data = model.data_preprocessor(copy.deepcopy(batch), False)
    with torch.no_grad():
        return model.predict(data["inputs"], data["data_samples"])


def predict_batch(runner, n=2):
    return [s.seg_logits.data for s in predict_samples(runner)]


def test_no_equi_settings_and_scoring_alone_are_bit_identical_to_stock(synthetic_val_root, tmp_path):
    runner = Runner.from_cfg(demo_cfg(synthetic_val_root, tmp_path))
    stock = predict_batch(runner)
    assert runner.model not in equi_mmseg.segmentor._RUNTIMES  # the wrapper stayed out of the way
    assert all("equi_score" not in s.metainfo for s in predict_samples(runner))
    with equi_mmseg.scenario(runner.model, "clean", record_scores=True):
        scored = predict_samples(runner)
    for a, b in zip(stock, scored):
        assert torch.equal(a, b.seg_logits.data)
    assert len(scored) == len(stock) == 1  # one image per test batch
    assert 0 < scored[0].metainfo["equi_score"] <= 1  # the score travels on the output (a cosine of real maps)


def test_defense_none_reproduces_vanilla_exactly(synthetic_val_root, tmp_path):
    vanilla = Runner.from_cfg(demo_cfg(synthetic_val_root, tmp_path / "a"))
    with_none = Runner.from_cfg(demo_cfg(synthetic_val_root, tmp_path / "b", defense="none"))
    with_none.model.load_state_dict(vanilla.model.state_dict())
    assert vanilla.test() == with_none.test()


def record_calls(monkeypatch, cls):
    """Patch ``cls.__call__`` to record (images in, images out) of every call."""
    calls = []
    stock = cls.__call__

    def spy(self, images, *args, **kwargs):
        out = stock(self, images, *args, **kwargs)
        calls.append((images.detach().clone(), getattr(out, "images", out).detach().clone()))
        return out

    monkeypatch.setattr(cls, "__call__", spy)
    return calls


def record_prediction_inputs(monkeypatch, model, method="inference"):
    """Patch ``model.<method>`` to record the inputs of every prediction (the attack's forwards, which run with
    gradients on, are left out): what the model predicted on."""
    seen = []
    stock = getattr(model, method)

    def spy(inputs, metas):
        if not torch.is_grad_enabled():
            seen.append(inputs.detach().clone())
        return stock(inputs, metas)

    monkeypatch.setattr(model, method, spy)
    return seen


def test_config_with_custom_imports_defends_under_plain_runner(synthetic_val_root, tmp_path, monkeypatch):
    """The stock-tool path: no tools/test.py, only custom_imports in the config."""
    from equi_ext.attacks import Attack
    from equi_ext.core.defense import EquivarianceDefense

    cfg = demo_cfg(synthetic_val_root, tmp_path, defense=dict(type="equi", steps=2, transforms=["hflip"]),
                   attack=dict(type="pgd", eps=4, steps=2))
    assert "equi_ext.mmseg" in cfg.custom_imports["imports"]
    runner = Runner.from_cfg(cfg)
    runner.model.eval()  # MMEngine's test loop switches to eval itself and leaves it so
    before = fingerprint(runner.model)
    attacks, defenses = record_calls(monkeypatch, Attack), record_calls(monkeypatch, EquivarianceDefense)
    seen = record_prediction_inputs(monkeypatch, runner.model)
    metrics = runner.test()
    assert "mIoU" in metrics
    assert len(attacks) == len(defenses) == len(seen) == 2  # one image per batch, the default scenario
    for (clean, attacked), (defended_in, defended), inputs in zip(attacks, defenses, seen):
        assert 0 < (attacked - clean).abs().max() <= 4 + 1e-3
        assert torch.equal(defended_in, attacked) and (defended - attacked).abs().max() > 0
        pixels = equi_mmseg.runtime(runner.model).pixels.to_pixels(inputs)
        torch.testing.assert_close(pixels, defended, atol=1e-3, rtol=0)  # the model predicted on the defended
    assert fingerprint(runner.model) == before  # weights, buffers, flags untouched by attack + defense
    assert torch.is_grad_enabled()  # the test loop's no_grad did not leak out, nor did enable_grad


def test_equi_encoder_decoder_is_the_defended_encoder_decoder_under_its_own_name(synthetic_val_root, tmp_path):
    defense = dict(type="equi", steps=1, transforms=["hflip"])
    stock = Runner.from_cfg(demo_cfg(synthetic_val_root, tmp_path / "a", defense=defense))
    cfg = demo_cfg(synthetic_val_root, tmp_path / "b", defense=defense)
    cfg.model.type = "EquiEncoderDecoder"
    named = Runner.from_cfg(cfg)
    assert type(named.model) is equi_mmseg.EquiEncoderDecoder
    named.model.load_state_dict(stock.model.state_dict(), strict=True)
    defended = predict_batch(named)
    for a, b in zip(predict_batch(stock), defended, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    equi_mmseg.configure(named.model, defense=None)
    assert any(not torch.equal(a, b) for a, b in zip(predict_batch(named), defended, strict=True))


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


def test_sliding_window_mode_is_defended(synthetic_val_root, tmp_path, monkeypatch):
    """Slide mode: each whole image is defended once (the transforms need the whole view), then windowed."""
    from equi_ext.core.defense import EquivarianceDefense

    cfg = demo_cfg(synthetic_val_root, tmp_path, mode="slide", crop_size=(64, 64), stride=(48, 48),
                   defense=dict(type="equi", steps=1, transforms=["hflip"]), attack=dict(type="pgd", eps=4, steps=1))
    cfg.test_evaluator = [cfg.test_evaluator, dict(type="EquiScoreMetric")]
    runner = Runner.from_cfg(cfg)
    defenses = record_calls(monkeypatch, EquivarianceDefense)
    seen = record_prediction_inputs(monkeypatch, runner.model, "slide_inference")  # what the windows were cut from
    with equi_mmseg.scenario(runner.model, "defended", record_scores=True):
        metrics = runner.test()
    assert "mIoU" in metrics and metrics["equi/images"] == 2
    assert [tuple(images.shape) for images, _ in defenses] == [(1, 3, 128, 128)] * 2
    assert all((out - images).abs().max() > 0 for images, out in defenses)
    assert len(seen) == 2  # the windows were cut from the defended image
    for (_, defended), inputs in zip(defenses, seen):
        pixels = equi_mmseg.runtime(runner.model).pixels.to_pixels(inputs)
        torch.testing.assert_close(pixels, defended, atol=1e-3, rtol=0)


def test_a_scenario_block_leaves_the_model_as_it_was_also_on_errors(synthetic_val_root, tmp_path):
    from equi_ext.pipeline import CONFIGURED_RUN, active_run

    runner = Runner.from_cfg(demo_cfg(synthetic_val_root, tmp_path, defense=dict(type="equi", steps=1)))
    model = runner.model
    before, attributes = equi_mmseg.runtime(model), dict(vars(model))
    with pytest.raises(RuntimeError, match="interrupted"):
        with equi_mmseg.scenario(model, "defended", record_scores=True, attack=dict(type="pgd", steps=1)) as run:
            assert active_run(model) is run and run.scenario == "defended" and run.record_scores
            assert run.pipeline.attack_cfg["type"] == "pgd" and run.pipeline is not before.pipeline
            assert "attack" not in model.test_cfg  # the run carries the setting; the model does not
            raise RuntimeError("interrupted")
    assert "attack" not in model.test_cfg and model.test_cfg["defense"] == dict(type="equi", steps=1)
    assert equi_mmseg.runtime(model) is before and active_run(model) is CONFIGURED_RUN
    assert vars(model) == attributes


def test_scenario_names_are_checked(synthetic_val_root, tmp_path):
    runner = Runner.from_cfg(demo_cfg(synthetic_val_root, tmp_path, defense="equi"))
    with pytest.raises(ValueError, match="unknown scenario\\(s\\) 'sneaky'; valid: clean, clean_defended"):
        with equi_mmseg.scenario(runner.model, "sneaky"):
            pass


@pytest.mark.parametrize("defense, cls", [
    (dict(type="random", eps_v=4), "RandomNoiseDefense"),
    (dict(type="detect_then_defend", threshold=1.0, defense=dict(type="equi", steps=1)), "DetectThenDefend"),
    (dict(type="invariance", steps=1), "InvarianceDefense"),
])
def test_baseline_defenses_are_selectable_by_name(synthetic_val_root, tmp_path, monkeypatch, defense, cls):
    import equi_ext.defenses as defenses

    runner = Runner.from_cfg(demo_cfg(synthetic_val_root, tmp_path, n=1, defense=defense))
    calls = record_calls(monkeypatch, getattr(defenses, cls))
    with equi_mmseg.scenario(runner.model, "clean_defended", record_scores=True) as run:
        assert "mIoU" in runner.test()
    assert type(run.pipeline.defense).__name__ == cls
    assert len(calls) == 1 and (calls[0][1] - calls[0][0]).abs().max() > 0  # it ran and moved the image


@pytest.mark.parametrize("bgr_to_rgb", [True, False])
def test_a_red_file_reaches_the_defense_as_red_rgb_pixels(synthetic_val_root, tmp_path, monkeypatch, bgr_to_rgb):
    """The core's convention: RGB pixels in [0, 255], whatever channel order the model was trained on."""
    import shutil

    import numpy as np
    from PIL import Image

    from equi_ext.core.defense import EquivarianceDefense

    root = tmp_path / "red"
    for sub in ("img_dir/val", "ann_dir/val"):
        (root / sub).mkdir(parents=True)
    name = sorted((synthetic_val_root / "img_dir/val").iterdir())[0].name
    shutil.copy(synthetic_val_root / "ann_dir/val" / name, root / "ann_dir/val" / name)
    picture = np.zeros((128, 128, 3), np.uint8)
    picture[:, :64, 0] = 255  # left half red, right half blue (RGB as the file stores it)
    picture[:, 64:, 2] = 255
    Image.fromarray(picture).save(root / "img_dir/val" / name)

    cfg = demo_cfg(root, tmp_path / "work", n=1, defense=dict(type="equi", steps=1, transforms=["hflip"]))
    cfg.model.data_preprocessor.bgr_to_rgb = bgr_to_rgb
    runner = Runner.from_cfg(cfg)
    seen = []
    stock = EquivarianceDefense.__call__

    def spy(self, images, features, **kwargs):
        seen.append(images.detach().clone())
        return stock(self, images, features, **kwargs)

    monkeypatch.setattr(EquivarianceDefense, "__call__", spy)
    with equi_mmseg.scenario(runner.model, "clean_defended"):
        predict_batch(runner, n=1)
    (pixels,) = seen
    expected = torch.from_numpy(picture).permute(2, 0, 1)[None].float()
    torch.testing.assert_close(pixels, expected, atol=1e-3, rtol=0)


def test_detect_then_defend_predicts_unflagged_images_from_the_scores_backbone_outputs(synthetic_val_root, tmp_path,
                                                                                       monkeypatch):
    """Clean traffic: the detector's score already ran the backbone on every image, so the prediction computes
    only the flagged (defended) images' rows; the outputs are those of computing them all (last bits), and the
    backbone is the module it was (no hook left, no attribute set)."""
    cfg = demo_cfg(synthetic_val_root, tmp_path, n=3)
    cfg.test_dataloader.batch_size = 3
    model = Runner.from_cfg(cfg).model.eval()
    data = model.data_preprocessor(next(iter(Runner.build_dataloader(cfg.test_dataloader))), False)
    dtd = dict(type="detect_then_defend", threshold=-1.0, score_transforms=["hflip"],
               defense=dict(type="equi", preset="fast", steps=1))

    def predict(threshold, reuse, record_scores=False):
        with equi_mmseg.scenario(model, "clean_defended", record_scores=record_scores,
                                 defense=dict(dtd, threshold=threshold)) as run:
            assert equi_mmseg.runtime(model).reuses_backbone(run)  # detect-then-defend's default
            with running(model, dataclasses.replace(run, views=dict(reuse_backbone=reuse))), torch.no_grad():
                samples = model.predict(data["inputs"].clone(), copy.deepcopy(data["data_samples"]))
        return [s.seg_logits.data for s in samples], [s.metainfo.get("equi_score") for s in samples]

    rows = []  # (rows, gradients on?) of every batch the backbone computed
    backbone_cls = type(model.backbone)
    stock_forward = backbone_cls.forward

    def counting(self, x):
        rows.append((x.shape[0], torch.is_grad_enabled()))
        return stock_forward(self, x)

    monkeypatch.setattr(backbone_cls, "forward", counting)
    _, scores = predict(-1.0, reuse=False, record_scores=True)
    lowest, second = sorted(scores)[:2]
    for threshold, flagged in ((-1.0, 0), ((lowest + second) / 2, 1)):
        outputs, computed = {}, {}
        for reuse in (True, False):
            rows.clear()
            outputs[reuse], _ = predict(threshold, reuse)
            computed[reuse] = list(rows)
        assert computed[True][0] == (6, False)  # the score: the 3 images and their flips in one forward
        # the prediction computes the defended image's row only (or no row at all), instead of all three
        assert computed[True][-1] == (flagged, False) and computed[False] == computed[True][:-1] + [(3, False)]
        assert sum(grad for _, grad in computed[True]) == 2 * flagged  # the flagged image's one defense step
        for a, b in zip(outputs[True], outputs[False]):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item())
    assert "forward" not in vars(model.backbone)  # served through hooks, all removed: the module as it was
    assert not model.backbone._forward_hooks and not model.backbone._forward_pre_hooks
    with equi_mmseg.scenario(model, "clean_defended", defense="equi") as run:
        assert not equi_mmseg.runtime(model).reuses_backbone(run)  # other defenses keep their published last bits


def test_pixel_space_follows_the_model_to_another_device():
    """Moving the model after configuring it moves the preprocessor's mean/std, which the conversion must use."""
    from mmseg.models.data_preprocessor import SegDataPreProcessor

    from equi_ext.mmseg.segmentor import PixelSpace

    preprocessor = SegDataPreProcessor(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], bgr_to_rgb=True)
    space = PixelSpace(preprocessor)
    pixels = torch.rand(1, 3, 8, 8) * 255
    mean, std = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1), torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)
    torch.testing.assert_close(space.to_inputs(pixels), (pixels - mean) / std)  # RGB pixels are the RGB inputs
    preprocessor.to("meta")
    assert space.to_inputs(pixels.to("meta")).device.type == "meta"


UNPATCH_SCRIPT = """
import sys
from mmengine.config import Config
from mmseg.models.segmentors import EncoderDecoder
from mmseg.registry import MODELS
from mmseg.utils import register_all_modules

register_all_modules()
stock = dict(vars(EncoderDecoder))
import equi_ext.mmseg as equi_mmseg

assert EncoderDecoder.predict is not stock["predict"], "importing equi_ext.mmseg installs its predict"
equi_mmseg.unpatch()
assert dict(vars(EncoderDecoder)) == stock, "unpatch() leaves EncoderDecoder as MMSeg defines it"
equi_mmseg.unpatch()
assert dict(vars(EncoderDecoder)) == stock, "unpatch() twice changes nothing"

model_cfg = Config.fromfile(sys.argv[1]).model
model_cfg.test_cfg.update(defence="equi")  # misspelt: equi-ext's __init__ refuses it, MMSeg's ignores it
MODELS.build(dict(model_cfg, type="EncoderDecoder"))
try:
    MODELS.build(dict(model_cfg, type="EquiEncoderDecoder"))
    raise SystemExit("EquiEncoderDecoder lost equi-ext's checks after unpatch()")
except KeyError as err:
    assert "did you mean 'defense'" in str(err), err
model_cfg.test_cfg = dict(mode="whole", defense="equi")
equi_mmseg.runtime(MODELS.build(dict(model_cfg, type="EquiEncoderDecoder")))
stock_model = MODELS.build(dict(model_cfg, type="EncoderDecoder"))
try:
    equi_mmseg.runtime(stock_model)
    raise SystemExit("a stock EncoderDecoder after unpatch() was taken as defended")
except TypeError as err:
    assert "unpatch" in str(err), err
equi_mmseg.install()
assert EncoderDecoder.predict is equi_mmseg.EquiEncoderDecoder.predict
print("ok")
"""


def test_unpatch_gives_encoder_decoder_its_stock_methods_back(tmp_path):
    """Importing equi_ext.mmseg changes ``EncoderDecoder`` for the process; ``unpatch()`` undoes it exactly, while
    ``EquiEncoderDecoder`` keeps equi-ext's flow (here: its settings checks at build)."""
    import subprocess
    import sys

    script = tmp_path / "unpatch.py"
    script.write_text(UNPATCH_SCRIPT)
    run = subprocess.run([sys.executable, str(script), str(DEMO_CONFIG)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stderr[-3000:]


def test_a_model_with_a_runtime_is_freed_like_any_other():
    """The runtime cache is keyed weakly by the model, and a runtime does not hold its model alive."""
    import gc
    import weakref

    from mmseg.registry import MODELS

    model = MODELS.build(dict(Config.fromfile(str(DEMO_CONFIG)).model, test_cfg=dict(mode="whole", defense="equi")))
    assert equi_mmseg.runtime(model).model is model
    gone = weakref.ref(model)
    del model
    gc.collect()
    assert gone() is None
