"""The bad-input matrix: each case × the public API, the MMSeg path and the Detectron2 path.

Every case either raises early, with its exception type and a message naming the problem, or
follows a documented fallback whose result is checked (a batch of one or of mixed sizes is
processed exactly as image by image; a model that detects nothing scores AP 0, not NaN).
Cases already tested elsewhere are listed in the table of docs/user_guides/bad_input.md with their node
ids instead of being repeated here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.modeling import GeneralizedRCNN, build_model
from detectron2.structures import Instances
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.structures import PixelData
from mmseg.models import EncoderDecoder
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample
from torch import nn

import equi_ext
import equi_ext.mmseg as equi_mmseg
from equi_ext.attacks import ATTACKS
from equi_ext.core.defense import EquivarianceDefense
from equi_ext.core.scores import output_variance_score
from equi_ext.data.synthetic import generate_dataset
from equi_ext.defenses import DEFENSES
from equi_ext.detectron2 import register_synthetic_shapes
from equi_ext.detectron2.config import equi_settings
from equi_ext.detectron2.evaluation import build_annotated_test_loader, evaluate_scenarios

from .detectron2.conftest import DEMO_EQUI_YAML, small_cfg
from .mmseg.conftest import DEMO_CHECKPOINT, DEMO_CONFIG, load_tool

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")
SIZE = 64


@dataclass(frozen=True)
class Case:
    """``run(*fixtures)`` returns the calls that must each raise ``error`` matching ``match``; with
    ``error=None`` the case is a documented fallback and ``run`` checks the result itself."""

    id: str
    run: Callable[..., Any]
    error: type[BaseException] | None = None
    match: str = ""
    fixtures: tuple[str, ...] = ()
    numerics: bool = False  # compares two computation paths through a sign step (see the numerics marker)


def smooth(n: int = 2, size: int = SIZE, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=g) * 255
    return nn.functional.interpolate(coarse, size=size, mode="bicubic", align_corners=False).clamp(0, 255)


def with_value(images: torch.Tensor, value: float) -> torch.Tensor:
    images = images.clone()
    images[0, 1, 3, 5] = value
    return images


# ----- public API: every entry point that takes images -------------------------------------------
_conv = nn.Conv2d(3, 4, 3, padding=1)


def _features(x: torch.Tensor) -> torch.Tensor:
    return _conv(x / 255)


def api_calls(images: Any, pixel_range: tuple[float, float] | None = None) -> list[Callable[[], Any]]:
    """The defenses, an attack and both scores, each called on ``images`` (budgets: 4 levels of 255 of
    ``pixel_range``, when it is stated)."""
    labels = torch.zeros(2, SIZE, SIZE, dtype=torch.long)
    stated = {} if pixel_range is None else {"pixel_range": pixel_range}
    level = (pixel_range[1] - pixel_range[0]) / 255 if pixel_range else 1.0
    budget = {} if pixel_range is None else {"eps_v": 4 * level, "step_size": level}
    return [
        lambda: EquivarianceDefense(steps=1, **budget, **stated)(images, _features).images,
        lambda: equi_ext.defend(_features, images, method="invariance", steps=1, **budget, **stated).images,
        lambda: DEFENSES.build(dict(type="random", eps_v=4 * level, **stated))(images).images,
        lambda: equi_ext.defend(_features, images, method=dict(type="detect_then_defend", threshold=1.0,
                                                               defense=dict(type="equi", steps=1, **budget)),
                                **stated).images,
        lambda: ATTACKS.build(dict(type="pgd", steps=1, eps=4 * level, logits_fn=_features, **stated))(images, labels),
        lambda: equi_ext.equivariance_score(_features, images, **stated),
        lambda: output_variance_score(_features, images, **stated),
    ]


def check_api_stated_ranges() -> None:
    """[0, 1] images run once their range is stated (outputs inside it, within the budget), and so do dark
    0–255 images stated as such; a black image needs no statement (all zeros is no sign of the [0, 1] scale)."""
    unit = smooth() / 255
    for call in api_calls(unit, pixel_range=(0, 1)):
        out = call()
        assert torch.isfinite(out).all() and out.min() >= 0
        if out.shape == unit.shape:
            assert out.max() <= 1 and (out - unit).abs().max() <= 4 / 255 * 1.001
    for call in api_calls(smooth() / 255, pixel_range=(0, 255)) + api_calls(torch.zeros(2, 3, SIZE, SIZE)):
        assert torch.isfinite(call()).all()


# ----- MMSeg path: the stock EncoderDecoder.predict that equi_ext.mmseg wraps --------------------
class PredictOverridden(EncoderDecoder):
    """Like MMSeg's ``DepthEstimator``: its own ``predict`` never reaches the wrapped one."""

    def predict(self, inputs, data_samples=None):
        return data_samples


def build_segmentor(_class: type | None = None, **test_cfg: Any):
    """The demo DeepLabV3 (random weights) with ``test_cfg`` defense/attack settings (as ``_class``)."""
    init_default_scope("mmseg")
    cfg = Config.fromfile(str(DEMO_CONFIG))
    cfg.model.test_cfg.update(test_cfg)
    torch.manual_seed(0)
    if _class is not None:
        model = _class(**{k: v for k, v in cfg.model.items() if k != "type"})
    else:
        model = MODELS.build(cfg.model)
    model.eval()
    return model


@pytest.fixture(scope="module")
def segmentor():
    return build_segmentor(defense=dict(type="equi", steps=1, transforms=["hflip", "resize:0.5"]),
                           attack=dict(type="pgd", eps=4, steps=1))


def seg_samples(n: int, names: tuple[str, ...] = ("a.png", "b.png"), padding=((0, 0, 0, 0),) * 2,
                size: int = SIZE) -> list[SegDataSample]:
    """Data samples as MMSeg's test pipeline and preprocessor leave them (metas, ground truth)."""
    samples = []
    for i in range(n):
        left, right, top, bottom = padding[i]
        shape = (size - top - bottom, size - left - right)
        sample = SegDataSample(metainfo=dict(img_path=names[i], img_shape=shape, ori_shape=shape,
                                             pad_shape=(size, size), padding_size=padding[i]))
        sample.gt_sem_seg = PixelData(data=(torch.arange(shape[0] * shape[1]).view(1, *shape) % 3).long())
        samples.append(sample)
    return samples


def wrong_label_size(samples: list[SegDataSample]) -> list[SegDataSample]:
    """The second sample's ground truth replaced by one of another image's size."""
    samples[1].gt_sem_seg = PixelData(data=torch.zeros(1, 24, SIZE, dtype=torch.long))
    return samples


def seg_inputs(model, pixels: torch.Tensor) -> torch.Tensor:
    """Pixels as the data_preprocessor hands them to the model (normalised, channel order)."""
    return equi_mmseg.runtime(model).pixels.to_inputs(pixels)


def seg_predict(model, inputs: torch.Tensor, samples: list) -> list[torch.Tensor]:
    with torch.no_grad():
        return [s.seg_logits.data for s in model.predict(inputs, samples)]


def check_mmseg_batch_of_one(model) -> None:
    """Each image of a batch of two equals the image alone (attack + defense are per image)."""
    inputs, samples = seg_inputs(model, smooth(2, size=32)), seg_samples(2, size=32)
    together = seg_predict(model, inputs, samples)
    with torch.no_grad():  # EncoderDecoder.inference is stock: no attack, no defense
        stock = model.inference(inputs, [s.metainfo for s in samples])
    assert not torch.allclose(stock[0], together[0], atol=1e-3)  # the attack and the defense did act
    (alone,) = seg_predict(model, inputs[1:], samples[1:])
    torch.testing.assert_close(alone, together[1], atol=1e-4, rtol=0)


def check_mmseg_mixed_sizes(model) -> None:
    """A batch of a 32×32 image and a 24×20 one padded to 32×32 (their preprocessor metas
    differ) is split into groups, so each equals the image alone and padding is never defended."""
    inputs, samples = seg_inputs(model, smooth(2, size=32)), seg_samples(2, padding=((0, 0, 0, 0), (0, 12, 0, 8)),
                                                                          size=32)
    inputs[1, :, 24:] = 0.0  # what the preprocessor pads with (pad_val, after normalisation)
    inputs[1, :, :, 20:] = 0.0
    seen = []
    stock = model.inference

    def spy(batch, metas):
        seen.append(batch.clone())
        return stock(batch, metas)

    model.inference = spy
    try:
        together = seg_predict(model, inputs, samples)
    finally:
        del model.inference
    assert [tuple(t.shape[-2:]) for t in together] == [(32, 32), (24, 20)]
    final = seen[-1]  # what the stock inference predicted on: attacked + defended, padding untouched
    assert not torch.equal(final[1, :, :24, :20], inputs[1, :, :24, :20])
    assert (final[1, :, 24:] == 0).all() and (final[1, :, :, 20:] == 0).all()
    for i in range(2):
        (alone,) = seg_predict(model, inputs[i:i + 1], samples[i:i + 1])
        torch.testing.assert_close(alone, together[i], atol=1e-4, rtol=0)


def mmseg_tool(work_dir, *options: str) -> Callable[[], Any]:
    """tools/test.py on the demo config with ``--cfg-options``."""
    return lambda: load_tool("test").main([str(DEMO_CONFIG), "--work-dir", str(work_dir), "--cfg-options", *options])


@pytest.fixture(scope="module")
def empty_split(tmp_path_factory) -> str:
    """A data root whose val folders exist but hold nothing (e.g. generated with --num-val 0)."""
    root = tmp_path_factory.mktemp("empty_split")
    (root / "img_dir/val").mkdir(parents=True)
    (root / "ann_dir/val").mkdir(parents=True)
    return str(root)


# ----- Detectron2 path: EquiGeneralizedRCNN and tools/test.py with a yaml -------------------------
@pytest.fixture(scope="module")
def d2_dataset(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("coco_bad_inputs") / "shapes"
    generate_dataset(root, seed=3, image_size=SIZE, num_train=0, num_val=2)
    (name,) = register_synthetic_shapes(root, prefix="equi_bad_inputs")
    return name


@pytest.fixture(scope="module")
def detector(d2_dataset):
    """The demo Mask R-CNN architecture (random weights): defense T = 1 on flips, PGD-1."""
    torch.manual_seed(0)
    cfg = small_cfg(d2_dataset, "EQUI.DEFENSE_STEPS", "1", "EQUI.STEPS", "1", "EQUI.TRANSFORMS", "['hflip']")
    model = build_model(cfg)
    model.eval()
    return cfg, model, d2_dataset


def d2_infer(model, scenario: str, inputs: list[dict], record_scores: bool = False) -> list:
    from equi_ext.pipeline import EquiRun, running

    with running(model, EquiRun(scenario, record_scores=record_scores)), torch.no_grad():
        return model(inputs)


def d2_image_calls(image: Any) -> Callable[[Any], list[Callable[[], Any]]]:
    """``inference`` on one bad image: defended, and scored only (the clean scenario records scores)."""
    def calls(detector):
        _, model, _ = detector

        return [lambda: d2_infer(model, "clean_defended", [{"image": image}]),
                lambda: d2_infer(model, "clean", [{"image": image}], record_scores=True)]
    return calls


def purified(model, images: list[torch.Tensor]) -> list[torch.Tensor]:
    """The images the defended ``inference`` hands to the stock Mask R-CNN inference."""
    seen: list[torch.Tensor] = []
    stock = GeneralizedRCNN.inference

    def spy(self, batched_inputs, detected_instances=None, do_postprocess=True):
        seen.extend(x["image"].clone() for x in batched_inputs)
        return stock(self, batched_inputs, detected_instances, do_postprocess)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(GeneralizedRCNN, "inference", spy)
        d2_infer(model, "clean_defended", [{"image": im, "file_name": f"{i}.png"} for i, im in enumerate(images)])
    return seen


@pytest.fixture(scope="module")
def d2_batches(detector):
    """Purified images of the batch [A 32×32, B 24×32, C 32×32] and of A and B alone."""
    _, model, _ = detector
    a, c = smooth(2, size=32, seed=1)
    b = smooth(1, size=32, seed=2)[0, :, :24]
    mixed = purified(model, [a, b, c])
    return dict(originals=[a, b, c], mixed=mixed, a=purified(model, [a])[0], b=purified(model, [b])[0])


def check_d2_batch_of_one(batches) -> None:
    """A alone equals A purified together with C (a same-size group of two)."""
    assert not torch.equal(batches["a"], batches["originals"][0])  # the defense did act
    torch.testing.assert_close(batches["a"], batches["mixed"][0], atol=1e-3, rtol=0)


def check_d2_mixed_sizes(batches) -> None:
    """B keeps its size and equals B alone: size groups are purified separately, never padded together."""
    assert tuple(batches["mixed"][1].shape) == (3, 24, 32)
    torch.testing.assert_close(batches["b"], batches["mixed"][1], atol=1e-3, rtol=0)


def check_d2_empty_detections(detector, tmp_path) -> None:
    """A model that detects nothing scores COCO AP 0 where there is ground truth (Detectron2 alone: NaN)."""
    cfg, model, _ = detector
    predictor = model.roi_heads.box_predictor
    thresh, predictor.test_score_thresh = predictor.test_score_thresh, 1.01  # no score passes
    try:
        (row,) = evaluate_scenarios(cfg, None, scenarios=["clean"], model=model, output_dir=str(tmp_path))
    finally:
        predictor.test_score_thresh = thresh
    assert row["segm_AP"] == 0.0 and row["segm_AP50"] == 0.0 and row["bbox_AP"] == 0.0


def check_d2_empty_ground_truth(detector) -> None:
    """An image without annotations is still attacked (its RPN loss sees only background), within ε."""
    cfg, model, dataset = detector
    (inputs,) = next(iter(build_annotated_test_loader(cfg, dataset, 1)))
    inputs["instances"] = inputs["instances"][:0]
    seen = []
    stock = GeneralizedRCNN.inference

    def spy(self, batched_inputs, detected_instances=None, do_postprocess=True):
        seen.append(batched_inputs[0]["image"].clone())
        return stock(self, batched_inputs, detected_instances, do_postprocess)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(GeneralizedRCNN, "inference", spy)
        (out,) = d2_infer(model, "attacked", [inputs])
    delta = (seen[0] - inputs["image"].float()).abs().max()
    assert 0 < delta <= 4 + 1e-4 and isinstance(out["instances"], Instances)


def d2_tool(work_dir, dataset: str | None, *opts: str, checkpoint: str | None = None) -> Callable[[], Any]:
    """tools/test.py on the demo yaml, evaluating ``dataset`` (fails before any image is read)."""
    data = ["DATASETS.TEST", f"('{dataset}',)"] if dataset else []
    args = [str(DEMO_EQUI_YAML), *([checkpoint] if checkpoint else []), "--work-dir", str(work_dir),
            "--opts", "MODEL.WEIGHTS", "", "EQUI.SYNTHETIC_ROOT", "", *data, *opts]
    return lambda: load_tool("test").main(args)


def missing_files_dataset() -> str:
    """A registered COCO dataset whose files are not there (e.g. DETECTRON2_DATASETS unset)."""
    name = "equi_bad_inputs_missing_files"
    if name not in DatasetCatalog.list():
        register_coco_instances(name, {}, "/nonexistent/instances_val.json", "/nonexistent/val")
    return name


NAN, INF = float("nan"), float("inf")
CASES = [
    # --- public API ---------------------------------------------------------------------------------------------
    Case("api-wrong_rank", lambda: api_calls(smooth()[0]), ValueError, r"shape \(N, 3, H, W\) \(RGB\); got \(3, 64"),
    Case("api-wrong_channels", lambda: api_calls(smooth()[:, :1]), ValueError, r"got \(2, 1, 64, 64\)"),
    Case("api-wrong_dtype", lambda: api_calls(smooth().to(torch.uint8)), TypeError, "floating-point .*torch.uint8"),
    Case("api-out_of_range", lambda: api_calls(smooth() * 2), ValueError, r"must lie in pixel_range \(0.0, 255.0\)"),
    Case("api-unit_range", lambda: api_calls(smooth() / 255), ValueError, r"look like \[0, 1\] images .* pixel_range=\(0, 1\)"),
    Case("api-unit_range_stated", check_api_stated_ranges),
    Case("api-nan", lambda: api_calls(with_value(smooth(), NAN)), ValueError, "contains NaN or inf"),
    Case("api-inf", lambda: api_calls(with_value(smooth(), INF)), ValueError, "contains NaN or inf"),
    Case("api-empty_batch", lambda: api_calls(smooth()[:0]), ValueError, "empty batch"),
    Case("api-no_pixels", lambda: api_calls(smooth()[:, :, :0]), ValueError, r"has no pixels: shape \(2, 3, 0, 64\)"),
    Case("api-no_columns", lambda: api_calls(smooth(size=32)[..., :0]), ValueError, r"has no pixels: shape \(2, 3, 32, 0\)"),
    Case("api-mixed_sizes", lambda: api_calls([smooth(1)[0], smooth(1, size=48)[0]]), TypeError,
         r"must be a torch.Tensor of shape \(N, 3, H, W\); got list"),
    Case("api-too_small", lambda: [lambda: equi_ext.equivariance_score(_features, smooth(size=12)),
                                   lambda: equi_ext.defend(_features, smooth(size=12), method="invariance"),
                                   lambda: output_variance_score(_features, smooth(size=12))],
         ValueError, "images of size 12x12 are too small for Resize"),
    # --- MMSeg path ----------------------------------------------------------------------------------------------
    Case("mmseg-wrong_rank", lambda m: [lambda: m.predict(seg_inputs(m, smooth())[0], seg_samples(1))],
         ValueError, r"inputs must have shape \(N, 3, H, W\) \(RGB\); got \(3, 64, 64\)", ("segmentor",)),
    Case("mmseg-wrong_channels", lambda m: [lambda: m.predict(seg_inputs(m, smooth())[:, :1], seg_samples(2))],
         ValueError, r"inputs must have shape .* got \(2, 1, 64, 64\)", ("segmentor",)),
    Case("mmseg-wrong_dtype", lambda m: [lambda: m.predict(smooth().to(torch.uint8), seg_samples(2))],
         TypeError, "inputs must be a floating-point tensor", ("segmentor",)),
    Case("mmseg-batch_mismatch", lambda m: [lambda: m.predict(seg_inputs(m, smooth()), seg_samples(1))],
         ValueError, "got 1 data samples for a batch of 2 inputs", ("segmentor",)),
    Case("mmseg-label_size", lambda m: [lambda: m.predict(seg_inputs(m, smooth()), wrong_label_size(seg_samples(2)))],
         ValueError, r"the label map of image 'b.png' is \(24, 64\), but the image is \(64, 64\) as loaded",
         ("segmentor",)),
    Case("mmseg-out_of_range", lambda m: [lambda: m.predict(seg_inputs(m, smooth()) * 3, seg_samples(2))],
         ValueError, r"pixels \(inputs \* std \+ mean of the data_preprocessor\) values must lie in pixel_range",
         ("segmentor",)),
    Case("mmseg-nan", lambda m: [lambda: m.predict(with_value(seg_inputs(m, smooth()), NAN), seg_samples(2))],
         ValueError, "data_preprocessor.* contains NaN or inf", ("segmentor",)),
    Case("mmseg-inf", lambda m: [lambda: m.predict(with_value(seg_inputs(m, smooth()), INF), seg_samples(2))],
         ValueError, "data_preprocessor.* contains NaN or inf", ("segmentor",)),
    Case("mmseg-too_small", lambda m: [lambda: m.predict(seg_inputs(m, smooth(size=12)), seg_samples(2, size=12))],
         ValueError, "images of size 12x12 are too small for Resize", ("segmentor",)),
    Case("mmseg-batch_of_one", check_mmseg_batch_of_one, fixtures=("segmentor",), numerics=True),
    Case("mmseg-mixed_sizes", check_mmseg_mixed_sizes, fixtures=("segmentor",)),
    Case("mmseg-unknown_defense", lambda: [lambda: equi_mmseg.runtime(build_segmentor(defense="magic"))],
         KeyError, "unknown defense 'magic'; valid names: .*equi"),
    Case("mmseg-unknown_attack", lambda: [lambda: equi_mmseg.runtime(build_segmentor(attack="fgsm"))],
         KeyError, "unknown attack 'fgsm'; valid names: .*pgd"),
    Case("mmseg-misspelt_test_cfg_key", lambda: [lambda: build_segmentor(defence="equi"),
                                                 lambda: build_segmentor(atack="pgd"),
                                                 lambda: build_segmentor(feature_layers="neck")],
         KeyError, r"is not an equi-ext or MMSeg setting \(did you mean '(defense|attack|feature_layer)'\?\)"),
    Case("mmseg-key_the_defense_ignores", lambda: [lambda: build_segmentor(defense=dict(type="equi", eps_vv=4))],
         TypeError, r"defense 'equi' \(EquivarianceDefense\) does not accept 'eps_vv' \(did you mean 'eps_v'\?\); "
         r"it accepts: .*eps_v"),
    Case("mmseg-key_the_attack_ignores", lambda: [lambda: build_segmentor(attack=dict(type="pgd", lambda_e=20))],
         TypeError, r"attack 'pgd' \(PGD\) does not accept 'lambda_e'; it accepts: eps, ignore_index"),
    Case("mmseg-model_view_in_config", lambda: [lambda: build_segmentor(attack=dict(type="bpda", defense="equi"))],
         TypeError, r"attack 'bpda' \(BPDA\): 'defense' is supplied by equi-ext from the model"),
    Case("mmseg-predict_overridden", lambda: [lambda: build_segmentor(_class=PredictOverridden, defense="equi")],
         TypeError, r"PredictOverridden.predict is not equi-ext's \(the class overrides it"),
    Case("mmseg-negative_eps_v", lambda tmp: [mmseg_tool(tmp, "model.test_cfg.defense.type=equi",
                                                         "model.test_cfg.defense.eps_v=-1")],
         SystemExit, "eps_v must be > 0 pixel levels; got -1", ("tmp_path",)),
    Case("mmseg-missing_dataset", lambda tmp: [mmseg_tool(tmp, "test_dataloader.dataset.data_root=/nonexistent/x")],
         SystemExit, "test dataset data_root '/nonexistent/x' does not exist", ("tmp_path",)),
    Case("mmseg-empty_dataset", lambda tmp, root: [mmseg_tool(tmp, f"test_dataloader.dataset.data_root={root}")],
         SystemExit, r"test dataset folder '.*img_dir/val' holds no image", ("tmp_path", "empty_split")),
    Case("mmseg-scenario_without_attack",
         lambda tmp: [lambda s=s: load_tool("test").main([str(DEMO_CONFIG), "--work-dir", str(tmp), "--scenarios", s])
                      for s in ("clean,attacked", "defended")],
         SystemExit, "scenario '(attacked|defended)' needs model.test_cfg.attack, which the config does not set",
         ("tmp_path",)),
    Case("mmseg-scenario_without_defense",
         lambda tmp: [lambda: load_tool("test").main([str(DEMO_CONFIG), "--work-dir", str(tmp), "--scenarios",
                                                      "clean_defended"])],
         SystemExit, "scenario 'clean_defended' needs model.test_cfg.defense, which the config does not set",
         ("tmp_path",)),
    # --- Detectron2 path -----------------------------------------------------------------------------------------
    Case("d2-wrong_channels", d2_image_calls(torch.zeros(1, SIZE, SIZE)), ValueError,
         r"input 0: 'image' must be a \(3, H, W\) tensor; got \(1, 64, 64\)", ("detector",)),
    Case("d2-wrong_dtype", d2_image_calls(torch.ones(3, SIZE, SIZE, dtype=torch.bool)), TypeError,
         "input 0: 'image' must be uint8 or floating point .* got dtype torch.bool", ("detector",)),
    Case("d2-out_of_range", d2_image_calls(smooth(1)[0] * 4), ValueError, r"must lie in pixel_range \(0.0, 255.0\)",
         ("detector",)),
    Case("d2-nan", d2_image_calls(with_value(smooth(1), NAN)[0]), ValueError, "contains NaN or inf", ("detector",)),
    Case("d2-inf", d2_image_calls(with_value(smooth(1), INF)[0]), ValueError, "contains NaN or inf", ("detector",)),
    Case("d2-batch_of_one", check_d2_batch_of_one, fixtures=("d2_batches",), numerics=True),
    Case("d2-mixed_sizes", check_d2_mixed_sizes, fixtures=("d2_batches",), numerics=True),
    Case("d2-empty_detections", check_d2_empty_detections, fixtures=("detector", "tmp_path")),
    Case("d2-empty_ground_truth", check_d2_empty_ground_truth, fixtures=("detector",)),
    Case("d2-unknown_attack", lambda name: [lambda: build_model(small_cfg(name, "EQUI.ATTACK", "fgsm"))],
         KeyError, "unknown attack 'fgsm'; valid names: .*pgd", ("d2_dataset",)),
    Case("d2-key_the_defense_ignores", lambda name: [lambda: equi_settings(small_cfg(name, "EQUI.THRESHOLD", "0.9")),
                                                     lambda: build_model(small_cfg(name, "EQUI.THRESHOLD", "0.9"))],
         ValueError, r"EQUI.THRESHOLD = 0.9 does not apply to EQUI.DEFENSE 'equi' \(EquivarianceDefense\); it takes "
         r"EQUI.CHUNKED, EQUI.DEFENSE_STEPS, EQUI.EPS_V, EQUI.MIN_SIZE, EQUI.OPTIMIZER, EQUI.PRESET, EQUI.REDUCTION, "
         r"EQUI.RESAMPLE, EQUI.SEED, EQUI.STEP_SIZE, EQUI.TRANSFORMS, EQUI.TRANSFORMS_PER_STEP —", ("d2_dataset",)),
    Case("d2-key_the_attack_ignores", lambda name: [
        lambda: equi_settings(small_cfg(name, "EQUI.LAMBDA_E", "20.0")),
        lambda: equi_settings(small_cfg(name, "EQUI.EOT_SAMPLES", "8"))],
         ValueError, r"EQUI.(LAMBDA_E = 20.0|EOT_SAMPLES = 8) does not apply to EQUI.ATTACK 'pgd' \(PGD\)",
         ("d2_dataset",)),
    Case("d2-key_the_baseline_ignores", lambda name: [
        lambda: equi_settings(small_cfg(name, "EQUI.DEFENSE", "random")),
        lambda: equi_settings(small_cfg(name, "EQUI.DEFENSE", "random", "EQUI.TRANSFORMS", "None"))],
         ValueError, r"EQUI.(TRANSFORMS = \['hflip'.*|DEFENSE_STEPS = 4) does not apply to EQUI.DEFENSE 'random' "
         r"\(RandomNoiseDefense\); it takes EQUI.EPS_V, EQUI.SEED", ("d2_dataset",)),
    Case("d2-key_the_tool_ignores", lambda tmp: [d2_tool(tmp, None, "EQUI.THRESHOLD", "0.9")], SystemExit,
         "EQUI.THRESHOLD = 0.9 does not apply to EQUI.DEFENSE 'equi'", ("tmp_path",)),
    Case("d2-scenario_without_attack", lambda tmp: [
        lambda: load_tool("test").main([str(DEMO_EQUI_YAML), "--scenarios", "attacked", "--opts", "EQUI.ATTACK", ""])],
        SystemExit, "scenario 'attacked' needs EQUI.ATTACK, which the config does not set", ("tmp_path",)),
    Case("d2-negative_eps_v", lambda name: [lambda: build_model(small_cfg(name, "EQUI.EPS_V", "-1.0"))],
         ValueError, "eps_v must be > 0 pixel levels; got -1.0", ("d2_dataset",)),
    Case("d2-mismatched_checkpoint", lambda tmp, name: [d2_tool(tmp, name, checkpoint=str(DEMO_CHECKPOINT))],
         SystemExit, r"holds no Detectron2 state dict .*\['meta', 'state_dict'\] \(an MMEngine checkpoint",
         ("tmp_path", "d2_dataset")),
    Case("d2-missing_dataset", lambda tmp: [d2_tool(tmp, None, "EQUI.SYNTHETIC_ROOT", "/nonexistent/x")], SystemExit,
         "EQUI.SYNTHETIC_ROOT '/nonexistent/x' does not exist; generate it", ("tmp_path",)),
    Case("d2-unregistered_dataset", lambda tmp: [d2_tool(tmp, "nope_val")], SystemExit,
         "DATASETS.TEST names 'nope_val', which is not a registered dataset", ("tmp_path",)),
    Case("d2-missing_dataset_files", lambda tmp: [d2_tool(tmp, missing_files_dataset())], SystemExit,
         "json_file '/nonexistent/instances_val.json' does not exist", ("tmp_path",)),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=[pytest.mark.numerics] if c.numerics else [])
                                  for c in CASES])
def test_bad_input(case: Case, request) -> None:
    fixtures = [request.getfixturevalue(name) for name in case.fixtures]
    if case.error is None:
        case.run(*fixtures)
        return
    calls = case.run(*fixtures)
    assert calls
    for call in calls:
        with pytest.raises(case.error, match=case.match):
            call()


@pytest.mark.parametrize("attack", [dict(type="pgd", steps=1), dict(type="cw", steps=1), dict(type="sea", steps=3)])
def test_labels_outside_the_models_classes_are_named(attack):
    """Labels ≥ C (or negative) that are not ignore_index crashed deep in torch, naming neither image nor value."""
    labels = torch.zeros(2, SIZE, SIZE, dtype=torch.long)
    labels[1, 3, 4], labels[1, 5, 5] = 7, 255  # 255 is ignore_index: allowed

    def logits_fn(images):
        return _features(images)[:, :4]  # four classes

    with pytest.raises(ValueError, match=r"targets of image 1 hold labels \[7\] outside \[0, 4\)"):
        ATTACKS.build(dict(attack, logits_fn=logits_fn))(smooth(), labels)


def test_a_base_cycle_in_a_detectron2_yaml_is_named(tmp_path):
    from equi_ext.detectron2 import load_config

    (tmp_path / "a.yaml").write_text('_BASE_: "b.yaml"\nEQUI:\n  DEFENSE: "equi"\n')
    (tmp_path / "b.yaml").write_text('_BASE_: "a.yaml"\n')
    with pytest.raises(ValueError, match=r"_BASE_ cycle: .*a.yaml -> .*b.yaml -> .*a.yaml"):
        load_config(tmp_path / "a.yaml")


def test_a_damaged_record_is_named(tmp_path):
    from equi_ext.core.validation import SettingsError
    from equi_ext.mmseg.metrics import load_record

    (tmp_path / "00001.png.json").write_text('{"img": "00001.png", "areas": [[1, 2')
    with pytest.raises(SettingsError, match=r"per-image record '.*00001.png.json' is not valid JSON .*delete it"):
        load_record(tmp_path / "00001.png.json")


def test_an_interrupted_data_generation_is_completed_by_the_next_run(tmp_path, monkeypatch):
    """A first run killed while generating left a folder without meta.json, which every later run refused with
    'pass overwrite=True' (a Python argument no tool has); the next run now generates the split again."""
    from equi_ext.evaluation import demo

    root = tmp_path / "tune"
    (root / "img_dir/val").mkdir(parents=True)
    (root / "img_dir/val/00000.png").write_bytes(b"half a png")
    monkeypatch.setattr(demo, "TUNE_DATA", root)
    assert demo.ensure_tune_data() == root
    assert (root / "meta.json").is_file() and len(list((root / "img_dir/val").glob("*.png"))) == 100


def test_detectron2_weight_urls_are_fetched_or_named(tmp_path, monkeypatch, detector):
    """A ``detectron2://`` URL (how Detectron2's own configs name weights) is fetched through Detectron2's download
    cache and loaded; one that cannot be fetched is an error naming the URL and the way out. It passed the
    existence check, then failed with a bare FileNotFoundError."""
    import pickle

    from detectron2.utils.file_io import PathManager

    from equi_ext.core.validation import SettingsError
    from equi_ext.detectron2.evaluation import load_weights

    cfg, trained, _ = detector
    weights = {name: value.detach().numpy().copy() for name, value in trained.state_dict().items()}
    with open(tmp_path / "model_final.pkl", "wb") as f:
        pickle.dump({"model": weights, "__author__": "test", "matching_heuristics": False}, f)
    url = "detectron2://COCO-InstanceSegmentation/model_final.pkl"
    fetched = []
    monkeypatch.setattr(PathManager, "get_local_path",
                        lambda path, **kw: fetched.append(path) or str(tmp_path / "model_final.pkl"))
    torch.manual_seed(1)
    fresh = build_model(cfg)
    assert not torch.equal(fresh.state_dict()["backbone.bottom_up.stem.conv1.weight"],
                           trained.state_dict()["backbone.bottom_up.stem.conv1.weight"])
    load_weights(fresh, url)
    assert fetched == [url]
    for name, value in trained.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[name], value, rtol=0, atol=0)

    def offline(path, **kw):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(PathManager, "get_local_path", offline)
    with pytest.raises(SettingsError, match=r"weights 'detectron2://.*' could not be fetched \(OSError: Network is "
                                            r"unreachable\); download the file and pass its local path"):
        load_weights(fresh, url)
