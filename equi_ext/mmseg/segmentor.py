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
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from mmseg.models.segmentors import EncoderDecoder
from mmseg.registry import MODELS

from ..attacks import pixel_cross_entropy
from ..core.registry import did_you_mean
from ..core.seeding import image_seed
from ..core.validation import check_image_batch, check_images
from ..defenses import DetectThenDefend
from ..pipeline import EquiPipeline, PixelBatch, check_scenarios, temporarily
from .adversarial import adversarial_loss, adversarial_settings

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
        self._preprocessor = preprocessor
        self._normalise = getattr(preprocessor, "_enable_normalize", False)
        # Images are loaded BGR; only a channel conversion makes the model's inputs RGB.
        self.swap = not getattr(preprocessor, "channel_conversion", False)
        self.pad_val = float(getattr(preprocessor, "pad_val", 0))

    # Read from the preprocessor at each call: its buffers follow a later ``model.to(device)``.
    @property
    def mean(self) -> torch.Tensor | None:
        return self._preprocessor.mean if self._normalise else None

    @property
    def std(self) -> torch.Tensor | None:
        return self._preprocessor.std if self._normalise else None

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


class BackboneMemo:
    """The backbone outputs of one batch's no-grad feature forwards, served again to its prediction.

    Detect-then-defend scores every image with x and its copies in one forward; the images it does not flag
    reach the stock ``predict`` unchanged, so their backbone outputs are already known and only the decode
    head has to run (what keeps clean traffic cheap). Rows are matched by exact equality of the normalised
    inputs, so a row is only ever served the outputs of its own inputs (attacked, defended or padded rows
    that were not scored without gradients are computed); an eval-mode backbone treats a batch's rows
    independently, so only last bits can differ from computing them all at once.
    """

    def __init__(self) -> None:
        self.entries: list[tuple[torch.Tensor, list[torch.Tensor]]] = []
        self.single = False  # the backbone returns one tensor, not a tuple of levels

    def add(self, inputs: torch.Tensor, outs: Any) -> None:
        self.single = isinstance(outs, torch.Tensor)
        self.entries.append((inputs, [outs] if self.single else list(outs)))

    def lookup(self, row: torch.Tensor) -> tuple[list[torch.Tensor], int] | None:
        """(levels, row index) of an entry whose inputs hold ``row`` exactly, or None."""
        for inputs, levels in self.entries:
            if inputs.shape[1:] == row.shape:
                for j in range(inputs.shape[0]):
                    if torch.equal(inputs[j], row):
                        return levels, j
        return None

    @contextlib.contextmanager
    def serving(self, backbone: torch.nn.Module) -> Iterator[None]:
        """Within the block, ``backbone`` answers the rows it has seen from the memo and computes the others
        (in one call); afterwards it is the module it was."""
        if not self.entries:
            yield
            return
        compute = backbone.forward

        def forward(inputs: torch.Tensor) -> Any:
            found = [self.lookup(row) for row in inputs]
            missing = [i for i, hit in enumerate(found) if hit is None]
            if len(missing) == len(found):
                return compute(inputs)
            computed = compute(inputs[missing]) if missing else []
            computed = [computed] if isinstance(computed, torch.Tensor) else list(computed)
            rows = []
            for i, hit in enumerate(found):
                levels, j = hit if hit is not None else (computed, missing.index(i))
                rows.append([level[j] for level in levels])
            stacked = [torch.stack(level_rows) for level_rows in zip(*rows)]
            return stacked[0] if self.single else tuple(stacked)

        own = "forward" in vars(backbone)
        saved = vars(backbone).get("forward")
        backbone.forward = forward
        try:
            yield
        finally:
            if own:
                backbone.forward = saved
            else:
                del backbone.forward


class EquiRuntime:
    """Per-model state: the defense/attack pipeline and the current scenario."""

    def __init__(self, model: EncoderDecoder) -> None:
        self.model = model
        self.pipeline, (self.layer, self.layer_index) = build_equi_components(model.test_cfg)
        self.scenario: str | None = None
        self.record_scores = False
        self.pixels = PixelSpace(model.data_preprocessor)
        #: detect-then-defend: predict the images it lets through from its score's backbone outputs
        #: (``BackboneMemo``; False: compute them again, e.g. to measure what the reuse saves). Other
        #: defenses recompute: few of their rows would be served, and those would move published last bits.
        self.reuse_backbone = isinstance(self.pipeline.defense, DetectThenDefend)
        self._memo: BackboneMemo | None = None

    @property
    def defense(self):
        return self.pipeline.defense

    # ----- model views in pixel space ----------------------------------------------------
    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        model = self.model
        inputs = self.pixels.to_inputs(pixels)
        outs = model.backbone(inputs)
        if self._memo is not None and not torch.is_grad_enabled():
            self._memo.add(inputs, outs)
        if self.layer == "logits":
            return model.decode_head.forward(model.neck(outs) if model.with_neck else outs)
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
        attack_on, defend_on = self.pipeline.active(self.scenario)
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
        batch = SegBatch(self, inputs, data_samples)
        memo = BackboneMemo() if self.reuse_backbone and not self.model.backbone.training else None
        with temporarily(self, _memo=memo):
            scores = self.pipeline.process(batch, self.scenario, self.record_scores)
        with memo.serving(self.model.backbone) if memo is not None else contextlib.nullcontext():
            results = stock_predict(batch.new_inputs, data_samples)
        for sample, score in zip(results, scores):
            if score is not None:
                sample.set_metainfo({SCORE_KEY: score})
        return results


#: The data-sample metainfo key of an image's equivariance (or configured) score; ``EquiScoreMetric`` reads it.
SCORE_KEY = "equi_score"


class SegBatch(PixelBatch):
    """An MMSeg batch in pixel space: images grouped by padding and original shape (the defense sees each
    image without the preprocessor's padding), ground truth from ``gt_sem_seg``, the task loss the pixel
    cross-entropy of the model's ``inference`` (whole or sliding window)."""

    def __init__(self, rt: EquiRuntime, inputs: torch.Tensor, data_samples: list) -> None:
        super().__init__(rt.model, inputs.shape[0])
        self.rt, self.inputs, self.samples = rt, inputs, data_samples
        self.metas = [s.metainfo for s in data_samples]
        self.new_inputs = inputs.clone()
        self.ignore_index = getattr(rt.model.decode_head, "ignore_index", 255)

    def group_key(self, i: int) -> tuple:
        meta = self.metas[i]
        return tuple(meta.get("padding_size", (0, 0, 0, 0))), tuple(meta["ori_shape"])

    def _region(self, idx: list[int]) -> tuple[slice, ...]:
        left, right, top, bottom = self.group_key(idx[0])[0]
        h, w = self.inputs.shape[-2:]
        return slice(None), slice(None), slice(top, h - bottom), slice(left, w - right)

    def pixels(self, idx: list[int]) -> torch.Tensor:
        return self.rt.pixels.to_pixels(self.inputs[idx][self._region(idx)])

    def seed(self, i: int) -> int:
        return image_seed(self.metas[i].get("img_path"), None, i)

    def targets(self, idx: list[int]) -> torch.Tensor:
        """Ground truth of the images ``idx``, as MMSeg's test pipeline loads it: at the original image size (or,
        annotations loaded before a resize, at the resized one); a label map of any other size is an error, since
        the loss would compare it with logits stretched to it."""
        labels = [self.samples[i].gt_sem_seg.data[0] for i in idx]
        for i, label in zip(idx, labels):
            meta = self.metas[i]
            loaded = tuple(meta["ori_shape"][:2])
            resized = tuple(meta.get("img_shape", loaded)[:2])
            if tuple(label.shape) not in (loaded, resized):
                raise ValueError(f"the label map of image {meta.get('img_path', i)!r} is {tuple(label.shape)}, but "
                                 f"the image is {loaded} as loaded and {resized} resized: the annotation does "
                                 "not belong to this image")
        return torch.stack(labels).to(self.inputs.device).long()

    def logits_fn(self, idx: list[int]) -> Callable:
        return self.rt.logits_fn([self.metas[i] for i in idx], self.group_key(idx[0])[0], self.inputs.shape[-2:])

    def loss_fn(self, idx: list[int]) -> Callable:
        logits_fn = self.logits_fn(idx)
        return lambda x, t: pixel_cross_entropy(logits_fn(x), t, self.ignore_index)

    def view(self, idx: list[int], pixels: torch.Tensor) -> Callable:
        return self.rt.features

    @property
    def attack_extra(self) -> dict:
        return dict(ignore_index=self.ignore_index)

    def put(self, idx: list[int], pixels: torch.Tensor, changed: bool) -> None:
        if changed:  # scoring alone leaves the inputs bit-identical
            region = self._region(idx)
            normalised = self.rt.pixels.to_inputs(pixels)
            for j, i in enumerate(idx):
                self.new_inputs[i][region[1:]] = normalised[j]


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
    (``defense``, ``attack`` …) for the block only; yields the runtime. With ``record_scores`` each predicted
    data sample carries its image's score as ``metainfo['equi_score']`` (``EquiScoreMetric`` averages them).
    The model's ``test_cfg``, runtime and scenario are restored after the block, also when it raises."""
    model = getattr(model, "module", model)
    if name is not None:
        check_scenarios([name])
    saved_cfg = {key: model.test_cfg.get(key, _UNSET) for key in test_cfg}
    saved_runtime = getattr(model, "_equi_runtime", None)
    try:
        rt = configure(model, **test_cfg) if test_cfg else runtime(model)
        with temporarily(rt, scenario=name, record_scores=record_scores):
            yield rt
    finally:
        for key, value in saved_cfg.items():
            if value is _UNSET:
                model.test_cfg.pop(key, None)
            else:
                model.test_cfg[key] = value
        model._equi_runtime = saved_runtime


def _uses_equi(model: EncoderDecoder) -> bool:
    cfg = model.test_cfg or {}
    return (cfg.get("defense") is not None or cfg.get("attack") is not None
            or getattr(model, "_equi_runtime", None) is not None)


def install() -> None:
    """Wrap ``EncoderDecoder.predict`` and ``loss`` once (idempotent), and ``__init__`` so that a model whose
    ``test_cfg`` or ``train_cfg`` has a misspelt key or bad settings, or asks for a defense/attack its ``predict``
    would bypass, fails at build."""
    stock = EncoderDecoder.predict
    if getattr(stock, "_equi_wrapped", False):
        return
    stock_init, stock_loss = EncoderDecoder.__init__, EncoderDecoder.loss

    @functools.wraps(stock_init)
    def __init__(self, *args, **kwargs):
        stock_init(self, *args, **kwargs)
        adversarial_settings(self.train_cfg)
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

    @functools.wraps(stock_loss)
    def loss(self, inputs, data_samples):
        settings = adversarial_settings(self.train_cfg)
        if settings is None:
            return stock_loss(self, inputs, data_samples)
        return adversarial_loss(self, settings, inputs, data_samples, lambda x, s: stock_loss(self, x, s))

    EncoderDecoder.loss = loss


@MODELS.register_module()
class EquiEncoderDecoder(EncoderDecoder):
    """``model.type='EquiEncoderDecoder'`` for configs that prefer to name the defended model: the same
    model as ``EncoderDecoder`` (whose wrapped ``predict`` honours ``test_cfg.defense``/``attack``), so its
    checkpoints are interchangeable with the stock one's."""
