"""Adversarial training of EquiGeneralizedRCNN by ``EQUI.ADV_TRAIN.*``."""

from __future__ import annotations

import copy
import os

import pytest
import torch
from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.modeling import GeneralizedRCNN, build_model
from detectron2.utils.events import EventStorage

from equi_ext.attacks import PGD

from .conftest import build_small_model, small_cfg

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")
EPS = 4.0


def training_inputs(cfg, dataset: str) -> list[dict]:
    """Two training inputs as Detectron2's training mapper gives them (uint8 images, instances)."""
    mapper = DatasetMapper(cfg, is_train=True)
    torch.manual_seed(0)
    return [mapper(copy.deepcopy(record)) for record in DatasetCatalog.get(dataset)[:2]]


def test_the_step_is_taken_on_the_attacked_images_and_the_model_is_left_as_it_was(coco_fixture):
    _, name = coco_fixture
    cfg, model = build_small_model(name, "EQUI.ADV_TRAIN.ATTACK", "pgd", "EQUI.ADV_TRAIN.STEPS", "2")
    model.train()
    inputs = training_inputs(cfg, name)
    seen = []
    preprocess = model.preprocess_image
    model.preprocess_image = lambda batch: seen.append([x["image"].clone() for x in batch]) or preprocess(batch)
    flags = ([m.training for m in model.modules()], [p.requires_grad for p in model.parameters()])
    before = copy.deepcopy(model.state_dict())
    torch.manual_seed(3)
    with EventStorage():  # what Detectron2's trainer provides
        losses = model(inputs)
    del model.preprocess_image
    assert ([m.training for m in model.modules()], [p.requires_grad for p in model.parameters()]) == flags
    (trained_on,) = seen  # the attack's own forwards go through task_loss, not preprocess_image
    for x, adv in zip(inputs, trained_on):
        clean = model.to_pixels(x["image"])
        pixels = model.to_pixels(adv)
        assert (pixels - clean).abs().max() > 1 and (pixels - clean).abs().max() <= EPS + 1e-4
        assert pixels.min() >= 0 and pixels.max() <= 255

    # the same attack written out: PGD-2 on the sum of the training losses, one image size at a time
    fresh = copy.deepcopy(model)
    fresh.load_state_dict(before)
    fresh.eval()
    for p in fresh.parameters():
        p.requires_grad_(False)
    attacked = fresh.attacked_inputs(inputs)
    for x, adv in zip(attacked, trained_on):
        torch.testing.assert_close(x["image"], adv, atol=1e-4, rtol=0)
    if inputs[0]["image"].shape == inputs[1]["image"].shape:
        idx = [0, 1]
    else:
        idx = [0]
    pixels = torch.stack([model.to_pixels(inputs[i]["image"]) for i in idx])
    targets = [inputs[i]["instances"] for i in idx]
    expected = PGD(loss_fn=lambda x, t: fresh.task_loss(x, t, _group_seed(inputs, idx)), eps=EPS, steps=2)(
        pixels, targets)
    for j, i in enumerate(idx):
        torch.testing.assert_close(model.to_pixels(trained_on[i]), expected[j], atol=1e-4, rtol=0)

    # the step's losses are those of a plain step on the attacked images
    fresh.load_state_dict(before)
    fresh.train()
    for p, flag in zip(fresh.parameters(), flags[1]):
        p.requires_grad_(flag)
    plain_inputs = [dict(x, image=adv) for x, adv in zip(inputs, trained_on)]
    torch.manual_seed(3)
    with EventStorage():
        plain = GeneralizedRCNN.forward(fresh, plain_inputs)
    assert losses.keys() == plain.keys()
    for key in losses:
        torch.testing.assert_close(losses[key], plain[key], atol=1e-5, rtol=0, msg=key)


def _group_seed(inputs, idx):
    import zlib

    from equi_ext.core.seeding import image_seed

    return zlib.crc32(repr([image_seed(inputs[i].get("file_name"), inputs[i].get("image_id"), i) for i in idx])
                      .encode())


def test_without_the_attack_training_is_detectron2s(coco_fixture):
    _, name = coco_fixture
    cfg, model = build_small_model(name)
    model.train()
    inputs = training_inputs(cfg, name)
    state = copy.deepcopy(model.state_dict())
    with EventStorage():
        torch.manual_seed(3)
        ours = model(inputs)
        model.load_state_dict(state)
        torch.manual_seed(3)
        stock = GeneralizedRCNN.forward(model, inputs)
    assert all(torch.equal(ours[k], stock[k]) for k in stock)


@pytest.mark.parametrize(("opts", "error", "match"), [
    (("EQUI.ADV_TRAIN.ATTACK", "fgsm"), KeyError, r"unknown attack 'fgsm'"),
    (("EQUI.ADV_TRAIN.ATTACK", "segpgd"), ValueError, r"weights pixels by dense logits"),
    (("EQUI.ADV_TRAIN.ATTACK", "bpda"), ValueError, r"needs defense"),
    (("EQUI.ADV_TRAIN.ATTACK", "apgd", "EQUI.ADV_TRAIN.STEP_SIZE", "1.0"), TypeError, r"does not accept 'step_size'"),
    (("EQUI.ADV_TRAIN.ATTACK", "pgd", "EQUI.ADV_TRAIN.EPS", "-1.0"), ValueError, r"eps must be >= 0"),
    (("EQUI.ADV_TRAIN.ATTACK", "pgd", "EQUI.ADV_TRAIN.CLEAN_WEIGHT", "1.0"), ValueError, r"clean_weight"),
    (("EQUI.ADV_TRAIN.ATTACK", "pgd", "EQUI.ADV_TRAIN.BN", "batch"), ValueError, r"bn must be one of"),
    (("EQUI.ADV_TRAIN.ATACK", "pgd"), KeyError, r"EQUI.ADV_TRAIN.ATACK is not a Detectron2 or equi-ext config key \(did you mean .ATTACK.\?\)"),
])
def test_bad_adversarial_training_keys_fail_when_the_model_is_built(coco_fixture, opts, error, match):
    _, name = coco_fixture
    with pytest.raises(error, match=match):
        build_model(small_cfg(name, *opts))


def test_adversarial_training_runs_in_two_processes(tmp_path):
    """``tools/train_net.py ADV_CONFIG --num-gpus 2`` (gloo on CPU) trains: each process attacks its own images
    inside the DistributedDataParallel forward, and the weights it saves differ from those of the same
    two-process run with a zero budget (standard training; the runs are deterministic, so two zero-budget runs
    save the same weights)."""
    import subprocess
    import sys

    from equi_ext.data.synthetic import generate_dataset

    from .conftest import FIXTURE_SIZE, REPO

    root = tmp_path / "shapes"
    generate_dataset(root, seed=4, image_size=FIXTURE_SIZE, num_train=4, num_val=1)
    opts = ["EQUI.SYNTHETIC_ROOT", str(root), "DATASETS.TRAIN", "('equi_d2_adv_launch_train',)",
            "DATASETS.TEST", "('equi_d2_adv_launch_val',)", "INPUT.MIN_SIZE_TRAIN", f"({FIXTURE_SIZE},)",
            "INPUT.MAX_SIZE_TRAIN", str(FIXTURE_SIZE), "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2",
            "SOLVER.CHECKPOINT_PERIOD", "100", "DATALOADER.NUM_WORKERS", "0"]
    weights = {}
    for name, eps in (("adversarial", "4.0"), ("standard", "0.0")):
        run = subprocess.run([sys.executable, str(REPO / "tools/train_net.py"), "--config-file",
                              str(REPO / "configs/demo/mask_rcnn_R18_FPN_synthetic-128x128_adv.yaml"),
                              "--num-gpus", "2", *opts, "EQUI.ADV_TRAIN.EPS", eps, "OUTPUT_DIR", str(tmp_path / name)],
                             capture_output=True, text=True, timeout=600, cwd=REPO,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert run.returncode == 0, run.stderr[-3000:]
        weights[name] = torch.load(tmp_path / name / "model_final.pth", map_location="cpu", weights_only=True)["model"]
    changed = [k for k in weights["standard"] if not torch.equal(weights["standard"][k], weights["adversarial"][k])]
    assert any(k.startswith("backbone.bottom_up") for k in changed), changed
