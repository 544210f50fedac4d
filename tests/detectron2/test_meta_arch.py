"""EquiGeneralizedRCNN: box-aware mask-logit equivariance, attacks through the training losses,
COCO evaluation end to end, the model left untouched, and bad input."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from detectron2.data import DatasetCatalog
from detectron2.layers import ShapeSpec
from detectron2.modeling import Backbone, build_model
from detectron2.structures import Instances
from torch import nn

from equi_ext.core.losses import roi_equivariance
from equi_ext.core.transforms import HFlip, Resize, Rotate
from equi_ext.data.synthetic import generate_dataset
from equi_ext.detectron2 import load_config
from equi_ext.detectron2.config import equi_settings
from equi_ext.detectron2.evaluation import build_annotated_test_loader, evaluate_scenarios, load_weights
from equi_ext.detectron2.modeling import EquiGeneralizedRCNN, heads_in_training
from equi_ext.detectron2.modeling.objective import MaskRCNNObjective
from equi_ext.pipeline import EquiRun, running

from .conftest import DEMO_EQUI_YAML, FIXTURE_SIZE, REPO, build_small_model, small_cfg

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")
STRIDES = {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}


class FlipEquivariantBackbone(Backbone):
    """Block averages + a 1×1 convolution per level: exactly flip-equivariant on sides divisible by 64."""

    def __init__(self, channels: int = 64) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, channels, 1)
        self.channels = channels

    def forward(self, x):
        return {name: self.proj(F.avg_pool2d(x, stride)) for name, stride in STRIDES.items()}

    def output_shape(self):
        return {name: ShapeSpec(channels=self.channels, stride=stride) for name, stride in STRIDES.items()}

    @property
    def size_divisibility(self) -> int:
        return 64


def _symmetrise_mask_head(model) -> None:
    with torch.no_grad():
        for m in model.roi_heads.mask_head.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                m.weight.copy_((m.weight + m.weight.flip(-1)) / 2)


def _model_state(model) -> tuple:
    digest = hashlib.sha256()
    for tensor in [*model.state_dict().values()]:
        digest.update(tensor.detach().cpu().numpy().tobytes())
    return (digest.hexdigest(), tuple(p.requires_grad for p in model.parameters()),
            tuple(m.training for m in model.modules()))


def _inputs(dataset: str, cfg, n: int = 2) -> list[dict]:
    loader = build_annotated_test_loader(cfg, dataset, n)
    return [batch[0] for batch in loader]


@pytest.fixture(scope="module")
def small(coco_fixture):
    _, dataset = coco_fixture
    return build_small_model(dataset, "EQUI.DEFENSE_STEPS", "2", "EQUI.STEPS", "2")


# ----- box-aware inverse ---------------------------------------------------------------------------
@pytest.mark.parametrize("symmetric", [True, False])
def test_flipped_mask_logits_map_back_onto_the_originals(coco_fixture, symmetric):
    _, dataset = coco_fixture
    _, model = build_small_model(dataset)
    model.backbone = FlipEquivariantBackbone()
    if symmetric:
        _symmetrise_mask_head(model)
    pixels = torch.rand(2, 3, 128, 128) * 255
    boxes = [torch.tensor([[10.0, 20.0, 60.0, 50.0], [70.0, 5.0, 120.0, 100.0]]), torch.tensor([[3.0, 3.0, 40.0, 90.0]])]
    objective = MaskRCNNObjective(model, model.image_list, use_fpn=False, boxes=boxes)
    with torch.no_grad():
        terms = objective.terms("equivariance", pixels, [HFlip()], "dense", (0.0, 255.0))
    if symmetric:  # flip-equivariant model: the box-aware term is exact
        assert terms.min() > 0.9999
    else:  # the same comparison detects a head that is not flip-equivariant
        assert terms.max() < 0.99


def test_roi_term_skips_rotations_and_images_without_boxes():
    base = [torch.randn(2, 3, 4, 4), torch.zeros(0, 3, 4, 4)]
    flipped = [b.flip(-1) for b in base]
    terms, valid = roi_equivariance(base, [flipped, base, None], [HFlip(), Resize(0.5), Rotate(10.0)])
    assert valid.tolist() == [[True, True, False], [False, False, False]]
    torch.testing.assert_close(terms[0, :2], torch.ones(2))
    with pytest.raises(ValueError, match="not box-aligned"):
        Rotate(10.0).inverse_roi(base[0])


def test_mask_logit_objective_falls_back_to_fpn_without_boxes(small):
    _, model = small
    pixels = torch.rand(1, 3, FIXTURE_SIZE, FIXTURE_SIZE) * 255
    transforms = [HFlip(), Resize(0.5)]
    with torch.no_grad():
        dense = MaskRCNNObjective(model, model.image_list).terms("equivariance", pixels, transforms, "dense",
                                                                (0.0, 255.0))
        no_boxes = MaskRCNNObjective(model, model.image_list, use_fpn=False, boxes=[torch.zeros(0, 4)]).terms(
            "equivariance", pixels, transforms, "dense", (0.0, 255.0))
    torch.testing.assert_close(no_boxes, dense)


# ----- attacks through the training losses ---------------------------------------------------------
def test_heads_in_training_restores_flags_on_errors(small):
    _, model = small
    before = [m.training for m in model.modules()]
    with pytest.raises(RuntimeError, match="boom"), heads_in_training(model):
        assert model.roi_heads.training and model.proposal_generator.training and not model.backbone.training
        raise RuntimeError("boom")
    assert [m.training for m in model.modules()] == before


def test_task_loss_is_seeded_and_differentiable(small, coco_fixture):
    cfg, model = small
    inputs = _inputs(coco_fixture[1], cfg, 1)
    pixels = model.to_pixels(inputs[0]["image"])[None].requires_grad_(True)
    targets = [inputs[0]["instances"]]
    with torch.enable_grad():
        loss = model.task_loss(pixels, targets, seed=3)
        (grad,) = torch.autograd.grad(loss, pixels)
    assert grad.abs().sum() > 0
    with torch.no_grad():
        assert model.task_loss(pixels, targets, seed=3) == loss.detach()


def test_defended_attacked_inference_leaves_the_model_untouched(small, coco_fixture):
    cfg, model = small
    inputs = _inputs(coco_fixture[1], cfg, 2)
    before = _model_state(model)
    with running(model, EquiRun("defended")), torch.no_grad():
        outputs = model(inputs)
    assert _model_state(model) == before
    assert len(outputs) == 2 and all(isinstance(o["instances"], Instances) for o in outputs)
    assert all(o["instances"].image_size == (i["height"], i["width"]) for o, i in zip(outputs, inputs))
    assert all(o["instances"].has("pred_masks") for o in outputs)


def test_attack_changes_the_input_within_budget(small, coco_fixture):
    cfg, model = small
    inputs = _inputs(coco_fixture[1], cfg, 1)
    seen = []
    stock = EquiGeneralizedRCNN.__mro__[1].inference

    def spy(self, batched_inputs, detected_instances=None, do_postprocess=True):
        seen.append([x["image"].clone() for x in batched_inputs])
        return stock(self, batched_inputs, detected_instances, do_postprocess)

    with running(model, EquiRun("attacked")), pytest.MonkeyPatch.context() as mp, torch.no_grad():
        mp.setattr(EquiGeneralizedRCNN.__mro__[1], "inference", spy)
        model(inputs)
    delta = seen[-1][0] - inputs[0]["image"].float()
    assert 0 < delta.abs().max() <= 4.0 + 1e-4


# ----- evaluation end to end -----------------------------------------------------------------------
def test_tools_test_yaml_reports_coco_ap_per_scenario(coco_fixture, test_tool, tmp_path):
    _, dataset = coco_fixture
    rows = test_tool.main([str(DEMO_EQUI_YAML), "--work-dir", str(tmp_path), "--num-images", "2", "--opts",
                           "MODEL.WEIGHTS", "", "EQUI.SYNTHETIC_ROOT", "", "DATASETS.TEST", f"('{dataset}',)",
                           "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64", "EQUI.STEPS", "1",
                           "EQUI.DEFENSE_STEPS", "1", "EQUI.FEATURE", "fpn+mask_logits", "EQUI.ROI_SCORE_THRESH", "0.0"])
    assert [r["scenario"] for r in rows] == ["clean", "clean_defended", "attacked", "defended"]
    for row in rows:
        assert 0.0 <= row["segm_AP"] <= 100.0 and 0.0 <= row["bbox_AP"] <= 100.0
        assert row["images"] == 2 and -1.0 <= row["equivariance_score"] <= 1.0
    saved = json.loads((tmp_path / "equi_results.json").read_text())
    assert [r["scenario"] for r in saved["results"]] == [r["scenario"] for r in rows]
    assert (tmp_path / "equi_results.md").read_text().startswith("| scenario | mask AP")
    assert (tmp_path / "defended" / "coco_instances_results.json").is_file()


# ----- bad input -----------------------------------------------------------------------------------
def test_bad_inputs_get_clear_errors(small, coco_fixture):
    cfg, model = small
    with running(model, EquiRun("defended")):
        with pytest.raises(ValueError, match="non-empty list"):
            model.inference([])
        with pytest.raises(ValueError, match="needs ground truth"):
            model.inference([{"image": torch.zeros(3, 64, 64)}])
        with pytest.raises(ValueError, match=r"'image' must be a \(3, H, W\) tensor"):
            model.inference([{"image": torch.zeros(64, 64), "instances": None}])
    with running(model, EquiRun("clean_defended")), pytest.raises(ValueError, match="too small"):
        model.inference([{"image": torch.zeros(3, 12, 12)}])


@pytest.mark.parametrize("opts, error, match", [
    (["EQUI.DEFENSE", "magic"], KeyError, "unknown defense 'magic'; valid names"),
    (["EQUI.ATTACK", "houdini"], ValueError, "needs dense logits"),
    (["EQUI.EPS", "-1.0"], ValueError, "eps"),
    (["EQUI.FPN_LEVELS", "['p9']"], ValueError, "not backbone outputs"),
    (["EQUI.FEATURE", "mask_logits", "MODEL.MASK_ON", "False"], ValueError, "needs a model with a mask head"),
])
def test_bad_settings_fail_at_build_time(coco_fixture, opts, error, match):
    with pytest.raises(error, match=match):
        build_model(small_cfg(coco_fixture[1], *opts))


def test_chunked_defense_on_fpn_features_takes_the_same_steps(small):
    """EQUI.CHUNKED: one transformed copy per graph gives the terms and gradient of all copies in one graph."""
    from equi_ext.core.defense import EquivarianceDefense

    _, model = small
    pixels = (torch.rand(2, 3, FIXTURE_SIZE, FIXTURE_SIZE) * 255).requires_grad_(True)
    transforms = [HFlip(), Resize(0.5), Rotate(10.0)]
    objective = MaskRCNNObjective(model, model.image_list)
    whole, chunked = EquivarianceDefense(preset="fast"), EquivarianceDefense(preset="fast", chunked=True)
    terms, grad = whole._terms_and_gradient(objective, pixels, transforms)
    terms_c, grad_c = chunked._terms_and_gradient(objective, pixels, transforms)
    torch.testing.assert_close(terms_c, terms)  # float32 sums in another order: last bits
    torch.testing.assert_close(grad_c, grad, rtol=1e-4, atol=1e-6 * grad.abs().max().item())
    with_boxes = MaskRCNNObjective(model, model.image_list, boxes=[torch.zeros(0, 4)] * 2)
    with pytest.raises(ValueError, match="chunked=True needs dense features; this MaskRCNNObjective"):
        chunked._terms_and_gradient(with_boxes, pixels, transforms)
    cfg = load_config(DEMO_EQUI_YAML, ["EQUI.CHUNKED", "True"])
    assert equi_settings(cfg)["defense"]["chunked"] is True
    with pytest.raises(ValueError, match="EQUI.CHUNKED computes dense FPN features"):
        load_config(DEMO_EQUI_YAML, ["EQUI.CHUNKED", "True", "EQUI.FEATURE", "mask_logits"])


def test_bad_feature_name_and_missing_config():
    with pytest.raises(ValueError, match="EQUI.FEATURE must be one of"):
        small_cfg("x", "EQUI.FEATURE", "logits")
    from equi_ext.detectron2 import load_config

    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config("configs/nope.yaml")


def test_checkpoints_load_strictly(small, tmp_path):
    _, model = small
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_weights(model, str(tmp_path / "missing.pth"))
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    torch.save({"model": state}, tmp_path / "fp16.pth")
    load_weights(model, str(tmp_path / "fp16.pth"))  # fp16 weights load into the fp32 model
    loaded = model.state_dict()["roi_heads.mask_head.predictor.weight"]
    assert loaded.dtype == torch.float32
    torch.testing.assert_close(loaded, state["roi_heads.mask_head.predictor.weight"].float())
    del state["roi_heads.mask_head.predictor.weight"]
    torch.save({"model": state}, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="does not match the model"):
        load_weights(model, str(tmp_path / "partial.pth"))
    import os
    import pickle

    class RunsCode:
        def __reduce__(self):
            return os.mkdir, (str(tmp_path / "ran"),)

    (tmp_path / "zoo.pkl").write_bytes(pickle.dumps({"model": {}, "hook": RunsCode()}, protocol=2))
    with pytest.raises(ValueError, match=r"zoo.pkl' names the Python object \S*mkdir"):
        load_weights(model, str(tmp_path / "zoo.pkl"))  # a model-zoo .pkl is checked before Detectron2 unpickles it
    assert not (tmp_path / "ran").exists()


def test_evaluate_scenarios_refuses_plain_generalized_rcnn(coco_fixture):
    cfg = small_cfg(coco_fixture[1], "MODEL.META_ARCHITECTURE", "GeneralizedRCNN")
    with pytest.raises(ValueError, match="must be EquiGeneralizedRCNN"):
        evaluate_scenarios(cfg, None)
    assert DatasetCatalog.get(coco_fixture[1])


def test_coco_config_inherits_detectron2_model_zoo_and_paper_settings():
    from equi_ext.detectron2 import load_config

    cfg = load_config(REPO / "configs/mask_rcnn_R_50_FPN_coco_equi.yaml")
    assert cfg.MODEL.RESNETS.DEPTH == 50 and cfg.DATASETS.TEST == ("coco_2017_val",)
    assert cfg.SOLVER.MAX_ITER == 270000  # the 3x schedule: the model-zoo file was really merged
    settings = equi_settings(cfg)
    assert settings["defense"] == {"type": "equi", "preset": "paper", "eps_v": 5.0, "step_size": 10.0, "seed": 0}
    assert settings["attack"]["eps"] == 4.0 and settings["attack"]["type"] == "pgd"


def test_detect_then_defend_takes_the_threshold_and_configures_the_defense_it_wraps_with_the_rest():
    cfg = load_config(DEMO_EQUI_YAML, ["EQUI.DEFENSE", "detect_then_defend", "EQUI.THRESHOLD", "0.6"])
    assert equi_settings(cfg)["defense"] == {
        "type": "detect_then_defend", "threshold": 0.6,
        "defense": {"type": "equi", "preset": "mask_rcnn", "transforms": ["hflip", "resize:0.5", "resize:0.75",
                                                                          "resize:1.5"],
                    "steps": 4, "eps_v": 6.0, "step_size": 3.0, "transforms_per_step": "all", "seed": 0}}
    with pytest.raises(ValueError, match="EQUI.THRESHOLD = 0.6 does not apply to EQUI.DEFENSE 'equi'"):
        load_config(DEMO_EQUI_YAML, ["EQUI.THRESHOLD", "0.6"])


def test_bpda_attack_names_the_attack_it_runs_through_the_defense_and_the_other_keys_configure_it():
    cfg = load_config(DEMO_EQUI_YAML, ["EQUI.ATTACK", "bpda", "EQUI.BPDA_ATTACK", "apgd", "EQUI.STEPS", "20"])
    assert equi_settings(cfg)["attack"] == {"type": "bpda", "attack": {"type": "apgd", "eps": 4.0, "steps": 20,
                                                                       "seed": 0}}
    cfg = load_config(DEMO_EQUI_YAML, ["EQUI.ATTACK", "eot", "EQUI.BPDA_ATTACK", "apgd", "EQUI.EOT_SAMPLES", "3"])
    assert equi_settings(cfg)["attack"] == {"type": "eot", "samples": 3,
                                            "attack": {"type": "apgd", "eps": 4.0, "steps": 10, "seed": 0}}
    with pytest.raises(ValueError, match="EQUI.BPDA_ATTACK = 'apgd' names the attack that EQUI.ATTACK bpda or eot "
                                         "runs through the defense; EQUI.ATTACK is 'pgd'"):
        load_config(DEMO_EQUI_YAML, ["EQUI.BPDA_ATTACK", "apgd"])
    with pytest.raises(ValueError, match="EQUI.LAMBDA_E = 2.0 does not apply to EQUI.BPDA_ATTACK 'apgd'"):
        load_config(DEMO_EQUI_YAML, ["EQUI.ATTACK", "bpda", "EQUI.BPDA_ATTACK", "apgd", "EQUI.LAMBDA_E", "2.0"])
    with pytest.raises(ValueError, match="attack 'bpda' \\(BPDA\\) needs dense logits"):
        build_model(load_config(DEMO_EQUI_YAML, ["EQUI.ATTACK", "bpda", "EQUI.BPDA_ATTACK", "sea"]))


def test_train_net_then_test_round_trip(tmp_path, test_tool):
    """tools/train_net.py trains (2 iterations) and its checkpoint loads strictly in tools/test.py."""
    root = tmp_path / "shapes"
    generate_dataset(root, seed=4, image_size=FIXTURE_SIZE, num_train=4, num_val=2)
    opts = ["EQUI.SYNTHETIC_ROOT", str(root), "DATASETS.TRAIN", "('equi_d2_roundtrip_train',)",
            "DATASETS.TEST", "('equi_d2_roundtrip_val',)", "INPUT.MIN_SIZE_TRAIN", f"({FIXTURE_SIZE},)",
            "INPUT.MIN_SIZE_TEST", str(FIXTURE_SIZE), "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2",
            "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", str(tmp_path / "train")]
    train_net = subprocess.run([sys.executable, str(REPO / "tools/train_net.py"), "--config-file",
                                str(REPO / "configs/demo/mask_rcnn_R18_FPN_synthetic-128x128.yaml"), *opts],
                               capture_output=True, text=True, timeout=600)
    assert train_net.returncode == 0, train_net.stderr[-2000:]
    weights = tmp_path / "train" / "model_final.pth"
    assert weights.is_file()
    rows = test_tool.main([str(DEMO_EQUI_YAML), str(weights), "--scenarios", "clean", "--opts", *opts,
                           "OUTPUT_DIR", str(tmp_path / "test")])
    assert rows[0]["scenario"] == "clean" and rows[0]["images"] == 2


@pytest.mark.numerics
def test_tools_test_yaml_two_processes_match_one(tmp_path):
    """``--num-gpus 2`` (Detectron2's launch, gloo on CPU) shards the images over two processes
    and reports the same mask AP and equivariance score as one process."""
    root = tmp_path / "shapes"
    generate_dataset(root, seed=5, image_size=128, num_train=0, num_val=2)
    opts = ["EQUI.SYNTHETIC_ROOT", str(root), "DATASETS.TEST", "('equi_d2_launch_val',)", "EQUI.STEPS", "1",
            "EQUI.DEFENSE_STEPS", "1"]
    results = {}
    for procs in (1, 2):
        out = tmp_path / f"procs{procs}"
        run = subprocess.run([sys.executable, str(REPO / "tools/test.py"), str(DEMO_EQUI_YAML), "--scenarios",
                              "clean,defended", "--num-gpus", str(procs), "--work-dir", str(out), "--opts", *opts],
                             capture_output=True, text=True, timeout=600, cwd=REPO)
        assert run.returncode == 0, run.stderr[-2000:]
        results[procs] = json.loads((out / "equi_results.json").read_text())["results"]
    for one, two in zip(results[1], results[2], strict=True):
        assert one["images"] == two["images"] == 2
        assert one["segm_AP"] == pytest.approx(two["segm_AP"], abs=1e-6)
        assert one["equivariance_score"] == pytest.approx(two["equivariance_score"], abs=1e-5)
