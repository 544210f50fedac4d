"""Make every ``EncoderDecoder`` honour ``model.test_cfg.defense`` and ``model.test_cfg.attack``.

Importing ``equi_ext.mmseg`` (``custom_imports`` in a config, or automatically in
``tools/test.py``) wraps ``EncoderDecoder.predict`` once. Without ``defense``/``attack``
keys (and without a scenario set by ``tools/test.py``) the wrapper calls the stock
``predict`` untouched, so vanilla results are bit-identical. With them, each batch is:

    normalised inputs → RGB pixels 0–255 (un-normalise, drop the preprocessor's padding)
    → attack (ground truth from the data samples) → defense → re-normalise, re-pad
    → stock ``predict`` (whole or sliding-window inference, ``postprocess_result``).

The defense sees the whole image once, also in sliding-window mode: its transforms
need the whole view (SPEC §6).
"""

from __future__ import annotations

import os
import zlib
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from mmseg.models.segmentors import EncoderDecoder

from ..attacks import ATTACKS, BPDA, Adaptive, defense_preprocessor, pixel_cross_entropy
from ..core.optimizer import EquivarianceDefense, frozen_model
from ..defenses import DEFENSES, NoDefense

#: scenario name → (attack?, defend?) — ``tools/test.py`` runs one IoUMetric evaluation each.
SCENARIOS = {
    "clean": (False, False),
    "clean_defended": (False, True),
    "attacked": (True, False),
    "defended": (True, True),
}
FEATURE_LAYERS = ("backbone", "neck", "logits")


def _as_cfg(value: Any) -> dict | None:
    if value is None:
        return None
    if isinstance(value, str):
        return {"type": value}
    return dict(value)


def parse_feature_layer(spec: str) -> tuple[str, int]:
    """``'backbone'`` / ``'backbone.2'`` / ``'neck'`` / ``'logits'`` → (layer, index)."""
    name, _, index = str(spec).partition(".")
    if name not in FEATURE_LAYERS or (index and not index.lstrip("-").isdigit()):
        raise ValueError(f"feature_layer must be one of {FEATURE_LAYERS}, optionally with '.INDEX' "
                         f"(e.g. 'backbone.2'); got {spec!r}")
    return name, int(index) if index else -1


def build_equi_components(test_cfg: Any) -> tuple[Any, dict | None, tuple[str, int]]:
    """Build the defense and check the attack config of a ``test_cfg`` (fails early on bad names).

    Returns (defense or None, attack cfg or None, feature layer).
    """
    defense_cfg = _as_cfg(test_cfg.get("defense"))
    attack_cfg = _as_cfg(test_cfg.get("attack"))
    defense = DEFENSES.build(defense_cfg) if defense_cfg is not None else None
    if attack_cfg is not None:
        cls = ATTACKS.get(attack_cfg.get("type"))
        # Build once with stand-ins, so bad budgets or unknown arguments fail now, not mid-run.
        cls(**_attack_kwargs(cls, attack_cfg, lambda x: x, lambda x, t: x.sum(), lambda x: x,
                             lambda x, seed: x))
    feature = parse_feature_layer(test_cfg.get("feature_layer", "backbone"))
    return defense, attack_cfg, feature


def _attack_kwargs(cls: type, cfg: dict, logits_fn: Callable, loss_fn: Callable, feature_fn: Callable,
                   preprocessor: Callable, ignore_index: int = 255, transforms: list | None = None) -> dict:
    kwargs = {k: v for k, v in cfg.items() if k != "type"}
    kwargs.update(loss_fn=loss_fn, logits_fn=logits_fn, ignore_index=ignore_index)
    if issubclass(cls, Adaptive):
        kwargs["feature_fn"] = feature_fn
        if transforms is not None:
            kwargs.setdefault("transforms", transforms)
    if issubclass(cls, BPDA):
        kwargs["defense"] = preprocessor
    return kwargs


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
        x = inputs * self.std + self.mean if self.mean is not None else inputs
        return (x.flip(1) if self.swap else x).clamp(0, 255)

    def to_inputs(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.flip(1) if self.swap else pixels
        return (x - self.mean) / self.std if self.mean is not None else x


class EquiRuntime:
    """Per-model state: the built defense, the attack config and the current scenario."""

    def __init__(self, model: EncoderDecoder) -> None:
        self.model = model
        self.defense, self.attack_cfg, (self.layer, self.layer_index) = build_equi_components(model.test_cfg)
        self.scenario: str | None = None
        self.record_scores = False
        self.scores: list[float] = []
        self.pixels = PixelSpace(model.data_preprocessor)
        # Scores are always equivariance scores: the equi defense's own transforms, else the default set.
        self._score_defense = self.defense if type(self.defense) is EquivarianceDefense else EquivarianceDefense()

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
        attack_on = attack_on and self.attack_cfg is not None
        defend_on = defend_on and self.defense is not None and not isinstance(self.defense, NoDefense)
        if not (attack_on or defend_on or self.record_scores):
            return stock_predict(inputs, data_samples)
        if data_samples is None:
            raise ValueError("equi-ext needs data samples (image metas) to defend or attack a batch")
        metas = [s.metainfo for s in data_samples]
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, meta in enumerate(metas):
            groups[(tuple(meta.get("padding_size", (0, 0, 0, 0))), tuple(meta["ori_shape"]))].append(i)
        new_inputs = inputs.clone()
        with frozen_model(self.model):
            for (padding, _), idx in groups.items():
                left, right, top, bottom = padding
                h, w = inputs.shape[-2:]
                region = (slice(None), slice(None), slice(top, h - bottom), slice(left, w - right))
                pixels = self.pixels.to_pixels(inputs[idx][region])
                seeds = [self._image_seed(metas[i], i) for i in idx]
                if attack_on:
                    pixels = self._attack(pixels, [data_samples[i] for i in idx], [metas[i] for i in idx],
                                          padding, (h, w), seeds)
                if defend_on:
                    own_score = self.record_scores and self.defense is self._score_defense
                    out = self.defense(pixels, self.features, model=self.model, image_seeds=seeds,
                                       compute_score=own_score)
                    pixels = out.images
                if self.record_scores:  # always the equivariance score, whatever the defense optimised
                    score = out.score if defend_on and own_score else self._score_defense.score(pixels, self.features)
                    self.scores.extend(score.tolist())
                if attack_on or defend_on:  # scoring alone leaves the inputs bit-identical
                    normalised = self.pixels.to_inputs(pixels)
                    for j, i in enumerate(idx):
                        new_inputs[i][region[1:]] = normalised[j]
        return stock_predict(new_inputs, data_samples)

    def _attack(self, pixels, samples, metas, padding, padded_size, seeds) -> torch.Tensor:
        if any(not hasattr(s, "gt_sem_seg") for s in samples):
            raise ValueError("an attack needs ground truth: the test pipeline must load annotations "
                             "(LoadAnnotations) so data samples carry gt_sem_seg")
        targets = torch.stack([s.gt_sem_seg.data[0] for s in samples]).to(pixels.device).long()
        logits_fn = self.logits_fn(metas, padding, padded_size)
        ignore_index = getattr(self.model.decode_head, "ignore_index", 255)

        def loss_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return pixel_cross_entropy(logits_fn(x), t, ignore_index)

        if self.defense is None or isinstance(self.defense, NoDefense):
            def preprocessor(x: torch.Tensor, seed: int) -> torch.Tensor:  # BPDA on no defense = PGD
                return x.clone()
        else:
            preprocessor = defense_preprocessor(self.defense, self.features, model=self.model, image_seeds=seeds)
        cls = ATTACKS.get(self.attack_cfg["type"])
        # The adaptive attacker is white-box: it uses the transforms of the defense it faces.
        transforms = self._score_defense.transforms
        attack = cls(**_attack_kwargs(cls, self.attack_cfg, logits_fn, loss_fn, self.features, preprocessor,
                                      ignore_index, transforms))
        return attack(pixels, targets, image_seeds=seeds)

    @staticmethod
    def _image_seed(meta: dict, index: int) -> int:
        """Stable per-image seed from the file name (not the folder, which differs between
        machines), so results depend neither on batching nor on where the data lives."""
        path = meta.get("img_path")
        return zlib.crc32(os.path.basename(str(path)).encode()) if path else index


def runtime(model: EncoderDecoder) -> EquiRuntime:
    """The model's equi-ext runtime, built on first use from ``model.test_cfg``."""
    model = getattr(model, "module", model)
    if not isinstance(model, EncoderDecoder):
        raise TypeError(f"equi-ext's MMSeg path supports EncoderDecoder-based models; got {type(model).__name__}")
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
    """Wrap ``EncoderDecoder.predict`` once (idempotent)."""
    stock = EncoderDecoder.predict
    if getattr(stock, "_equi_wrapped", False):
        return

    def predict(self, inputs, data_samples=None):
        if not _uses_equi(self):
            return stock(self, inputs, data_samples)
        return runtime(self).predict(inputs, data_samples, lambda x, s: stock(self, x, s))

    predict._equi_wrapped = True
    predict.__doc__ = stock.__doc__
    EncoderDecoder.predict = predict
