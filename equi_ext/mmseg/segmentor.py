"""Make every ``EncoderDecoder`` honour ``model.test_cfg.defense`` and ``model.test_cfg.attack``.

Importing ``equi_ext.mmseg`` (``custom_imports`` in a config, or automatically in
``tools/test.py``) wraps ``EncoderDecoder.predict`` once. Without ``defense``/``attack``
keys (and without a scenario set by ``tools/test.py``) the wrapper calls the stock
``predict`` untouched, so vanilla results are bit-identical. With them, each batch is:

    normalised inputs → RGB pixels 0–255 (un-normalise, drop the preprocessor's padding)
    → attack (ground truth from the data samples) → defense → re-normalise, re-pad
    → stock ``predict`` (whole or sliding-window inference, ``postprocess_result``).

The defense sees the whole image once, also in sliding-window mode: its transforms
need the whole view, and a window's cut would break the flip/resize correspondence.
"""

from __future__ import annotations

import contextlib
import functools
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from mmseg.models.segmentors import EncoderDecoder
from mmseg.registry import MODELS

from ..attacks import pixel_cross_entropy
from ..core.optimizer import frozen_model
from ..core.registry import did_you_mean
from ..core.seeding import image_seed
from ..core.validation import check_image_batch, check_images
from ..pipeline import SCENARIOS, EquiPipeline, temporarily

FEATURE_LAYERS = ("backbone", "neck", "logits")
_UNSET = object()


def parse_feature_layer(spec: str) -> tuple[str, int]:
    """``'backbone'`` / ``'backbone.2'`` / ``'neck'`` / ``'logits'`` → (layer, index)."""
    name, _, index = str(spec).partition(".")
    if name not in FEATURE_LAYERS or (index and not index.lstrip("-").isdigit()):
        raise ValueError(f"feature_layer must be one of {FEATURE_LAYERS}, optionally with '.INDEX' "
                         f"(e.g. 'backbone.2'); got {spec!r}")
    return name, int(index) if index else -1


#: The ``model.test_cfg`` keys equi-ext reads; the rest of ``test_cfg`` belongs to MMSeg (``mode``, ``crop_size`` …).
TEST_CFG_KEYS = ("defense", "attack", "score", "feature_layer")


def check_test_cfg_keys(test_cfg: Any) -> None:
    """A ``test_cfg`` key that is a near miss of one of equi-ext's (``defence``, ``atack``) is a ``KeyError``:
    it would otherwise be ignored by both MMSeg and equi-ext, and the run would quietly be vanilla."""
    for key in test_cfg or {}:
        hint = did_you_mean(key, TEST_CFG_KEYS) if key not in TEST_CFG_KEYS else ""
        if hint:
            raise KeyError(f"model.test_cfg.{key} is not an equi-ext or MMSeg setting{hint}")


def build_equi_components(test_cfg: Any) -> tuple[EquiPipeline, tuple[str, int]]:
    """Build the defense/attack pipeline of a ``test_cfg`` (fails early on bad names, keys or budgets)."""
    check_test_cfg_keys(test_cfg)
    pipeline = EquiPipeline(test_cfg.get("defense"), test_cfg.get("attack"),
                            score=test_cfg.get("score", "equivariance"))
    return pipeline, parse_feature_layer(test_cfg.get("feature_layer", "backbone"))


class PixelSpace:
    """Convert between the preprocessor's normalised inputs and RGB pixels in [0, 255]."""

    def __init__(self, preprocessor: Any) -> None:
        normalise = getattr(preprocessor, "_enable_normalize", False)
        self.mean = preprocessor.mean if normalise else None
        self.std = preprocessor.std if normalise else None
        # Images are loaded BGR; only a channel conversion makes the model's inputs RGB.
        self.swap = not getattr(preprocessor, "channel_conversion", False)
        self.pad_val = float(getattr(preprocessor, "pad_val", 0))

    def to_pixels(self, inputs: torch.Tensor) -> torch.Tensor:
        """RGB pixels of ``inputs``; values outside [0, 255] (beyond rounding) or NaN/inf are an error,
        not clamped: they mean the images or the preprocessor's mean/std are not what equi-ext assumes."""
        x = inputs * self.std + self.mean if self.mean is not None else inputs
        x = x.flip(1) if self.swap else x
        check_images(x, name="pixels (inputs * std + mean of the data_preprocessor)")
        return x.clamp(0, 255)

    def to_inputs(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.flip(1) if self.swap else pixels
        return (x - self.mean) / self.std if self.mean is not None else x


class EquiRuntime:
    """Per-model state: the defense/attack pipeline and the current scenario."""

    def __init__(self, model: EncoderDecoder) -> None:
        self.model = model
        self.pipeline, (self.layer, self.layer_index) = build_equi_components(model.test_cfg)
        self.scenario: str | None = None
        self.record_scores = False
        self.scores: list[float] = []
        self.pixels = PixelSpace(model.data_preprocessor)

    @property
    def defense(self):
        return self.pipeline.defense

    # ----- model views in pixel space ----------------------------------------------------
    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        model = self.model
        inputs = self.pixels.to_inputs(pixels)
        if self.layer == "logits":
            return model.decode_head.forward(model.extract_feat(inputs))
        outs = model.backbone(inputs)
        if self.layer == "neck":
            if not model.with_neck:
                raise ValueError("feature_layer='neck' but the model has no neck")
            outs = model.neck(outs)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        return outs[self.layer_index]

    def logits_fn(self, metas: list[dict], padding: tuple[int, int, int, int], padded_size: tuple[int, int]):
        left, right, top, bottom = padding

        def logits(pixels: torch.Tensor) -> torch.Tensor:
            inputs = F.pad(self.pixels.to_inputs(pixels), (left, right, top, bottom), value=self.pixels.pad_val)
            out = self.model.inference(inputs, [dict(m) for m in metas])  # copies: slide mode edits metas
            return out[..., top:padded_size[0] - bottom, left:padded_size[1] - right]

        return logits

    # ----- one batch ----------------------------------------------------------------------
    def predict(self, inputs: torch.Tensor, data_samples: list | None, stock_predict: Callable) -> list:
        attack_on, defend_on = SCENARIOS[self.scenario] if self.scenario else (True, True)
        attack_on = attack_on and self.pipeline.attack_cfg is not None
        defend_on = defend_on and self.pipeline.defends
        if not (attack_on or defend_on or self.record_scores):
            return stock_predict(inputs, data_samples)
        if data_samples is None:
            raise ValueError("equi-ext needs data samples (image metas) to defend or attack a batch")
        check_image_batch(inputs, name="inputs")
        if len(data_samples) != inputs.shape[0]:
            raise ValueError(f"got {len(data_samples)} data samples for a batch of {inputs.shape[0]} inputs")
        if attack_on and any(not hasattr(s, "gt_sem_seg") for s in data_samples):
            raise ValueError("an attack needs ground truth: the test pipeline must load annotations "
                             "(LoadAnnotations) so data samples carry gt_sem_seg")
        metas = [s.metainfo for s in data_samples]
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, meta in enumerate(metas):
            groups[(tuple(meta.get("padding_size", (0, 0, 0, 0))), tuple(meta["ori_shape"]))].append(i)
        new_inputs = inputs.clone()
        ignore_index = getattr(self.model.decode_head, "ignore_index", 255)
        with frozen_model(self.model):
            for (padding, _), idx in groups.items():
                left, right, top, bottom = padding
                h, w = inputs.shape[-2:]
                region = (slice(None), slice(None), slice(top, h - bottom), slice(left, w - right))
                logits_fn = self.logits_fn([metas[i] for i in idx], padding, (h, w))
                targets = None
                if attack_on:
                    targets = torch.stack([data_samples[i].gt_sem_seg.data[0] for i in idx]).to(inputs.device).long()

                def loss_fn(x: torch.Tensor, t: torch.Tensor, logits_fn=logits_fn) -> torch.Tensor:
                    return pixel_cross_entropy(logits_fn(x), t, ignore_index)

                pixels, score = self.pipeline.run(
                    self.pixels.to_pixels(inputs[idx][region]), attack=attack_on, defend=defend_on,
                    features=self.features, model=self.model, seeds=[image_seed(metas[i].get("img_path"), None, i) for i in idx],
                    targets=targets, loss_fn=loss_fn, logits_fn=logits_fn, record_score=self.record_scores,
                    ignore_index=ignore_index)
                if score is not None:
                    self.scores.extend(score.tolist())
                if attack_on or defend_on:  # scoring alone leaves the inputs bit-identical
                    normalised = self.pixels.to_inputs(pixels)
                    for j, i in enumerate(idx):
                        new_inputs[i][region[1:]] = normalised[j]
        return stock_predict(new_inputs, data_samples)


def check_wrappable(model: EncoderDecoder) -> None:
    """A subclass that overrides ``predict`` (e.g. MMSeg's ``DepthEstimator``) never reaches the wrapped one:
    refuse it rather than evaluate it undefended."""
    if not isinstance(model, EncoderDecoder):
        raise TypeError(f"equi-ext's MMSeg path supports EncoderDecoder-based models; got {type(model).__name__}")
    if getattr(type(model).predict, "_equi_wrapped", False) is False:
        raise TypeError(f"{type(model).__name__} overrides EncoderDecoder.predict, which equi-ext wraps to attack and "
                        f"defend each batch; its test_cfg.defense/attack would be ignored, so equi-ext refuses it")


def runtime(model: EncoderDecoder) -> EquiRuntime:
    """The model's equi-ext runtime, built on first use from ``model.test_cfg``."""
    model = getattr(model, "module", model)
    check_wrappable(model)
    if getattr(model, "_equi_runtime", None) is None:
        model._equi_runtime = EquiRuntime(model)
    return model._equi_runtime


def configure(model: EncoderDecoder, **test_cfg: Any) -> EquiRuntime:
    """Change ``model.test_cfg`` keys (``defense``, ``attack``, ``feature_layer``) and rebuild the runtime.

    For benchmarks that evaluate many defense × attack pairs with one model.
    """
    model = getattr(model, "module", model)
    for key, value in test_cfg.items():
        model.test_cfg[key] = value
    model._equi_runtime = None
    return runtime(model)


@contextlib.contextmanager
def scenario(model: EncoderDecoder, name: str | None, *, record_scores: bool = False,
             **test_cfg: Any) -> Iterator[EquiRuntime]:
    """Evaluate scenario ``name`` (one of ``SCENARIOS``; None = as configured) with the ``test_cfg`` keys given
    (``defense``, ``attack`` …) for the block only; yields the runtime, whose ``scores`` the block's batches fill.
    The model's ``test_cfg``, runtime and scenario are restored after the block, also when it raises."""
    model = getattr(model, "module", model)
    if name is not None and name not in SCENARIOS:
        raise ValueError(f"scenario must be one of {tuple(SCENARIOS)}; got {name!r}")
    saved_cfg = {key: model.test_cfg.get(key, _UNSET) for key in test_cfg}
    saved_runtime = getattr(model, "_equi_runtime", None)
    try:
        rt = configure(model, **test_cfg) if test_cfg else runtime(model)
        with temporarily(rt, scenario=name, record_scores=record_scores, scores=[]):
            yield rt
    finally:
        for key, value in saved_cfg.items():
            if value is _UNSET:
                model.test_cfg.pop(key, None)
            else:
                model.test_cfg[key] = value
        model._equi_runtime = saved_runtime


def set_scenario(model: EncoderDecoder, scenario: str | None, record_scores: bool = False) -> EquiRuntime:
    """Select what the next evaluation measures: one of ``SCENARIOS`` (None = as configured)."""
    if scenario is not None and scenario not in SCENARIOS:
        raise ValueError(f"scenario must be one of {tuple(SCENARIOS)}; got {scenario!r}")
    rt = runtime(model)
    rt.scenario, rt.record_scores, rt.scores = scenario, record_scores, []
    return rt


def _uses_equi(model: EncoderDecoder) -> bool:
    cfg = model.test_cfg or {}
    return (cfg.get("defense") is not None or cfg.get("attack") is not None
            or getattr(model, "_equi_runtime", None) is not None)


def install() -> None:
    """Wrap ``EncoderDecoder.predict`` once (idempotent), and ``__init__`` so that a model whose ``test_cfg``
    has a misspelt key or bad settings, or asks for a defense/attack its ``predict`` would bypass, fails at build."""
    stock = EncoderDecoder.predict
    if getattr(stock, "_equi_wrapped", False):
        return
    stock_init = EncoderDecoder.__init__

    @functools.wraps(stock_init)
    def __init__(self, *args, **kwargs):
        stock_init(self, *args, **kwargs)
        check_test_cfg_keys(self.test_cfg)
        if _uses_equi(self):
            check_wrappable(self)
            build_equi_components(self.test_cfg)  # bad names, keys or budgets fail here, not at the first batch

    EncoderDecoder.__init__ = __init__

    def predict(self, inputs, data_samples=None):
        if not _uses_equi(self):
            return stock(self, inputs, data_samples)
        return runtime(self).predict(inputs, data_samples, lambda x, s: stock(self, x, s))

    predict._equi_wrapped = True
    predict.__doc__ = stock.__doc__
    EncoderDecoder.predict = predict


@MODELS.register_module()
class EquiEncoderDecoder(EncoderDecoder):
    """``model.type='EquiEncoderDecoder'`` for configs that prefer to name the defended model: the same
    model as ``EncoderDecoder`` (whose wrapped ``predict`` honours ``test_cfg.defense``/``attack``), so its
    checkpoints are interchangeable with the stock one's."""
