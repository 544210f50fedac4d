"""Device handling without a GPU: every tensor follows its inputs' device.

Two checks stand in for a CUDA machine. Pieces whose work does not depend on tensor values run on the
``meta`` device, where a tensor created on the CPU and mixed in raises as it would on CUDA. Code that
reads values (the defense, the attacks) cannot run there, so it runs on the CPU under a mode that flags
every tensor it creates with neither a device nor a generator: such a tensor lands on the CPU whatever
device the images are on (a generator's draws are deliberate: they keep results device-independent).
"""

import collections
import traceback

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from equi_ext.attacks import ATTACKS, build_attack, defense_preprocessor
from equi_ext.core.defense import PRESETS, EquivarianceDefense
from equi_ext.core.losses import roi_equivariance
from equi_ext.core.transforms import TRANSFORMS, HFlip, Resize, Rotate
from equi_ext.evaluation.visual_report import reversed_prediction

FACTORIES = {torch.zeros, torch.ones, torch.empty, torch.full, torch.arange, torch.rand, torch.randn, torch.randint,
             torch.randperm, torch.tensor, torch.as_tensor, torch.eye, torch.linspace, torch.normal}


class DeviceLessFactories(TorchFunctionMode):
    """Records equi_ext's calls of tensor factories given neither ``device`` nor ``generator``."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: collections.Counter = collections.Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in FACTORIES and "device" not in kwargs and "generator" not in kwargs:
            caller = next((f for f in reversed(traceback.extract_stack()[:-1]) if "/equi_ext/" in f.filename), None)
            if caller is not None:
                self.calls[f"{caller.filename}:{caller.lineno} torch.{func.__name__}"] += 1
        return func(*args, **kwargs)


def test_roi_term_stays_on_the_device_of_images_without_boxes():
    base = [torch.zeros(0, 3, 4, 4, device="meta"), torch.zeros(0, 3, 4, 4, device="meta")]
    terms, valid = roi_equivariance(base, [base, base], [HFlip(), Resize(0.5)])
    assert terms.device.type == valid.device.type == "meta"
    torch.where(valid, terms, torch.zeros_like(terms))  # the Mask R-CNN objective's fallback to the dense term


@pytest.mark.parametrize("name", TRANSFORMS.names())
def test_transforms_follow_the_device_of_their_inputs(name):
    transform = TRANSFORMS.build(dict(type=name)).sample(torch.Generator().manual_seed(0))
    images = torch.zeros(2, 3, 32, 48, device="meta")
    moved = transform.apply(images)
    back = transform.inverse(moved, (32, 48))
    mask = transform.valid_mask((32, 48), images.device)
    assert {moved.device.type, back.device.type, mask.device.type} == {"meta"}
    (back * mask).sum()
    if transform.roi_aligned:
        boxes = torch.tensor([[1.0, 2.0, 20.0, 30.0]], device="meta")
        assert transform.apply_boxes(boxes, (32, 48)).device.type == "meta"


def test_rotation_masks_match_across_devices():
    """Computed once on the CPU and copied: a GPU run masks exactly the positions a CPU run masks."""
    rotate = Rotate(15.0)
    assert torch.equal(rotate.valid_mask((40, 56)), rotate.valid_mask((40, 56), torch.device("cpu")))
    assert rotate.valid_mask((40, 56), "meta").shape == (1, 1, 40, 56)


def test_visual_report_masks_a_rotation_on_the_labels_device():
    logits = torch.zeros(1, 3, 32, 32, device="meta")
    labels = torch.zeros(1, 32, 32, dtype=torch.long, device="meta")
    pred, target = reversed_prediction(Rotate(10.0), logits, labels, 255)
    assert pred.device.type == target.device.type == "meta"


def test_defense_and_attacks_create_no_tensor_on_the_default_device(toy_task):
    model = toy_task.model

    def logits_fn(x):
        return F.interpolate(model(x), size=x.shape[-2:], mode="bilinear", align_corners=False)

    def features(x):
        return [model.features(x)]

    images, labels = toy_task.images[:2, :, :32, :32], toy_task.labels[:2, :32, :32]
    defense = EquivarianceDefense(preset="fast", steps=2)
    purify = defense_preprocessor(defense, features, model=model)
    extra = {"bpda": dict(defense=purify), "eot": dict(defense=purify, samples=2),
             "adaptive": dict(feature_fn=model.features, transforms=["hflip", "rot90"]),
             "unrolled": dict(defense=defense_preprocessor(defense, features, model=model, differentiable=True))}
    lint = DeviceLessFactories()
    with lint:
        for preset in PRESETS:
            EquivarianceDefense(preset=preset, steps=2)(images, features, model=model)
        for name in ATTACKS.names():
            build_attack(dict(type=name, eps=4, steps=4), logits_fn=logits_fn, **extra.get(name, {}))(images, labels)
    assert not lint.calls, dict(lint.calls)


def test_the_lint_sees_a_tensor_made_on_the_default_device():
    from equi_ext.core import losses

    lint = DeviceLessFactories()
    with lint:
        torch.zeros(3)  # not from equi_ext: not its business
        eval(compile("torch.zeros(3)", losses.__file__, "eval"), {"torch": torch})
    assert list(lint.calls.values()) == [1]


@pytest.mark.gpu
def test_defense_on_cuda_follows_the_cpu_run(toy_task):
    """Per-image generators draw on the CPU, so a CUDA run makes the same random choices; only float
    rounding differs, which can flip a sign step here and there but not the restored prediction."""
    model = toy_task.model
    images = toy_task.images[:4]
    defense = EquivarianceDefense(preset="fast")
    cpu = defense(images, lambda x: [model.features(x)], model=model).images
    state = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        model.to("cuda")
        cuda = defense(images.cuda(), lambda x: [model.features(x)], model=model).images
        assert cuda.device.type == "cuda"
        agree = (toy_task.predict(cuda).cpu() == toy_task.predict(cpu.cuda()).cpu()).float().mean()
    finally:
        model.to("cpu")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert agree > 0.98
