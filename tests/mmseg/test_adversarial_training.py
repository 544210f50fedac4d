"""Adversarial training of an MMSeg EncoderDecoder by ``model.train_cfg.adversarial``."""

from __future__ import annotations

import copy

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.structures import PixelData
from mmseg.models import EncoderDecoder
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample

import equi_ext.mmseg  # wraps EncoderDecoder.loss
from equi_ext.attacks import PGD
from equi_ext.attacks.training import total_loss

from .conftest import DEMO_CONFIG

EPS = 4.0


def build(adversarial=None, **train_cfg):
    init_default_scope("mmseg")
    cfg = Config.fromfile(str(DEMO_CONFIG))
    cfg.model.train_cfg = dict(train_cfg, **({} if adversarial is None else {"adversarial": adversarial}))
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.train()
    return model


def training_batch(model, seed: int = 0):
    """Two images as the training pipeline hands them over, the second smaller, so the preprocessor pads it."""
    g = torch.Generator().manual_seed(seed)
    inputs, samples = [], []
    for h, w in ((128, 128), (96, 112)):
        image = (torch.rand(3, h, w, generator=g) * 255).to(torch.uint8)
        sample = SegDataSample(metainfo=dict(img_path=f"{h}x{w}.png", img_shape=(h, w), ori_shape=(h, w)))
        labels = torch.zeros(1, h, w, dtype=torch.long)
        labels[:, h // 4:h // 2, w // 4:3 * w // 4] = 1
        labels[:, 3 * h // 4:, :w // 3] = 2
        sample.gt_sem_seg = PixelData(data=labels)
        inputs.append(image)
        samples.append(sample)
    data = model.data_preprocessor(dict(inputs=inputs, data_samples=samples), training=True)
    return data["inputs"], data["data_samples"]


def state(model):
    return ([m.training for m in model.modules()], [p.requires_grad for p in model.parameters()],
            {k: v.clone() for k, v in model.state_dict().items()})


def test_the_step_is_taken_on_the_attacked_batch_and_the_model_is_left_as_it_was():
    """The losses come from inputs that differ from the clean batch inside each image only, lie within ε of it
    and inside [0, 255], and are what PGD on the model's own training loss returns for the batch; the attack
    leaves flags, requires_grad and BatchNorm statistics as a plain step on those inputs would."""
    model = build(dict(attack=dict(type="pgd", eps=EPS, steps=2)))
    inputs, samples = training_batch(model)
    stock_loss = EncoderDecoder.loss.__wrapped__
    seen = []
    extract = model.extract_feat
    model.extract_feat = lambda x: seen.append(x.detach().clone()) or extract(x)
    before = state(model)
    torch.manual_seed(5)  # the decode head's dropout
    losses = model.loss(inputs, samples)
    del model.extract_feat
    after = state(model)
    final = seen[-1]  # the inputs of the step's loss

    space = equi_ext.mmseg.segmentor.PixelSpace(model.data_preprocessor)
    clean, adv = space.to_pixels(inputs), space.to_pixels(final)
    assert (adv - clean)[0].abs().max() > 1  # attacked
    assert (adv - clean).abs().max() <= EPS + 1e-3 and adv.min() >= 0 and adv.max() <= 255
    assert torch.equal(final[1, :, 96:], inputs[1, :, 96:]) and torch.equal(final[1, :, :, 112:], inputs[1, :, :, 112:])
    assert after[0] == before[0] and after[1] == before[1]

    # the same attack written out: PGD-2 on the training loss, the padding held at its clean values
    fresh = copy.deepcopy(model)
    fresh.load_state_dict(before[2])
    region = torch.ones_like(clean, dtype=torch.bool)
    region[1, :, 96:] = False
    region[1, :, :, 112:] = False

    def loss_fn(x, _):
        return total_loss(stock_loss(fresh, space.to_inputs(torch.where(region, x, clean)), samples))

    fresh.eval()
    for p in fresh.parameters():
        p.requires_grad_(False)
    expected = PGD(loss_fn=loss_fn, eps=EPS, steps=2)(clean, torch.zeros(2, 128, 128, dtype=torch.long))
    expected = torch.where(region, expected, clean)
    torch.testing.assert_close(adv, expected, atol=1e-3, rtol=0)

    # BatchNorm statistics: those of one training forward of the attacked inputs, none from the attack's
    fresh.load_state_dict(before[2])
    fresh.train()
    torch.manual_seed(5)
    plain = stock_loss(fresh, final, samples)
    for key, value in fresh.state_dict().items():
        torch.testing.assert_close(after[2][key], value, atol=1e-6, rtol=0, msg=key)
    torch.testing.assert_close(total_loss(losses), total_loss(plain), atol=1e-5, rtol=0)


def test_clean_weight_mixes_the_clean_and_the_attacked_losses():
    model = build(dict(attack=dict(type="pgd", eps=EPS, steps=1), clean_weight=0.25))
    inputs, samples = training_batch(model, seed=1)
    snapshot = copy.deepcopy(model.state_dict())
    model.decode_head.dropout.p = 0.0  # the mix is compared with separate runs, so no dropout draws
    mixed = model.loss(inputs, samples)
    attacked_only = build(dict(attack=dict(type="pgd", eps=EPS, steps=1)))
    attacked_only.decode_head.dropout.p = 0.0
    attacked_only.load_state_dict(snapshot)
    adv = attacked_only.loss(inputs, samples)
    attacked_only.load_state_dict(snapshot)
    clean = EncoderDecoder.loss.__wrapped__(attacked_only, inputs, samples)
    expected = 0.25 * clean["decode.loss_ce"] + 0.75 * adv["decode.loss_ce"]
    torch.testing.assert_close(mixed["decode.loss_ce"], expected, atol=1e-4, rtol=0)
    assert not torch.allclose(clean["decode.loss_ce"], adv["decode.loss_ce"], atol=1e-3)


def test_without_the_key_training_is_mmsegs():
    model = build()
    inputs, samples = training_batch(model)
    snapshot = copy.deepcopy(model.state_dict())
    torch.manual_seed(5)
    ours = model.loss(inputs, samples)
    model.load_state_dict(snapshot)
    torch.manual_seed(5)
    stock = EncoderDecoder.loss.__wrapped__(model, inputs, samples)
    assert torch.equal(ours["decode.loss_ce"], stock["decode.loss_ce"])


@pytest.mark.parametrize(("train_cfg", "error", "match"), [
    (dict(adversarail=dict(attack="pgd")), KeyError, r"model.train_cfg.adversarail .*did you mean 'adversarial'"),
    (dict(adversarial_training=dict(attack="pgd")), KeyError, r"train_cfg.adversarial_training .*'adversarial'"),
    (dict(adversarial=dict(atack="pgd")), KeyError, r"adversarial.atack is not a setting .*did you mean 'attack'"),
    (dict(adversarial=dict(attack=dict(type="pgd", epss=4))), TypeError, r"does not accept 'epss'"),
    (dict(adversarial=dict(attack=dict(type="pgd", eps=-1))), ValueError, r"eps must be >= 0"),
    (dict(adversarial=dict(attack="bpda")), ValueError, r"needs defense"),
    (dict(adversarial=dict(attack="adaptive")), ValueError, r"needs features"),
    (dict(adversarial=dict(attack="pgd", clean_weight=1)), ValueError, r"clean_weight must be a number in \[0, 1\)"),
    (dict(adversarial=dict(attack="pgd", bn="batch")), ValueError, r"bn must be one of \('eval', 'train'\)"),
])
def test_bad_adversarial_settings_fail_when_the_model_is_built(train_cfg, error, match):
    with pytest.raises(error, match=match):
        build(**train_cfg)


def test_the_shipped_adversarial_config_fine_tunes_the_demo_model_with_pgd():
    from equi_ext.mmseg.adversarial import adversarial_settings

    cfg = Config.fromfile(str(DEMO_CONFIG.with_name("deeplabv3_r18c16-d8_1xb8-adv_synthetic-128x128.py")))
    settings = adversarial_settings(cfg.model.train_cfg)
    assert settings.attack_cfg == dict(type="pgd", eps=4, steps=2) and settings.clean_weight == 0
    assert (DEMO_CONFIG.parents[2] / cfg.load_from).is_file()
