"""Make MMSeg's ``EncoderDecoder`` honour ``model.test_cfg.defense`` and ``model.test_cfg.attack``.

``model.type='EquiEncoderDecoder'`` names the defended model; importing ``equi_ext.mmseg``
(``custom_imports`` in a config, or automatically in ``tools/test.py``) also gives every
``EncoderDecoder`` its methods (``install``; ``unpatch`` gives the stock ones back). Without
``defense``/``attack`` keys and without an active run (``equi_ext.pipeline.running``) the stock
``predict`` runs untouched, so vanilla results are bit-identical. With them, each batch is:

    normalised inputs → RGB pixels 0–255 (un-normalise, drop the preprocessor's padding)
    → attack (ground truth from the data samples) → defense → re-normalise, re-pad
    → stock ``predict`` (whole or sliding-window inference, ``postprocess_result``).

The defense sees the whole image once, also in sliding-window mode: its transforms
need the whole view, and a window's cut would break the flip/resize correspondence.
"""

from __future__ import annotations

import contextlib
import functools
import weakref
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
from ..pipeline import CONFIGURED_RUN, SCORE_KEY, EquiPipeline, EquiRun, PixelBatch, active_run, running, unwrapped
from .adversarial import adversarial_loss, adversarial_settings

FEATURE_LAYERS = ("backbone", "neck", "logits")


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
        """Within the block, ``backbone`` computes only the rows it has not seen (all the others: a forward of no
        rows) and answers those from the memo, through forward hooks that are removed afterwards; the module
        itself is never edited."""
        if not self.entries:
            yield
            return
        hits: list = []  # the call in flight: each row's memo entry (None: computed), and the computed rows
        missing: list[int] = []

        def before(module: torch.nn.Module, args: tuple) -> tuple | None:
            (inputs,) = args
            hits[:] = [self.lookup(row) for row in inputs]
            missing[:] = [i for i, hit in enumerate(hits) if hit is None]
            return None if len(missing) == len(hits) else (inputs[missing],)

        def after(module: torch.nn.Module, args: tuple, computed: Any) -> Any:
            if len(missing) == len(hits):
                return None
            computed = [computed] if isinstance(computed, torch.Tensor) else list(computed)
            rows = []
            for i, hit in enumerate(hits):
                levels, j = hit if hit is not None else (computed, missing.index(i))
                rows.append([level[j] for level in levels])
            stacked = [torch.stack(level_rows) for level_rows in zip(*rows)]
            return stacked[0] if self.single else tuple(stacked)

        handles = [backbone.register_forward_pre_hook(before), backbone.register_forward_hook(after)]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()


class EquiRuntime:
    """A model's pixel space and views, and the defense/attack pipeline its ``test_cfg`` configures."""

    def __init__(self, model: EncoderDecoder) -> None:
        self._model = weakref.ref(model)  # the runtime cache is keyed by the model: a strong link would keep it
        self.pipeline, self.layer = build_equi_components(model.test_cfg)
        self.pixels = PixelSpace(model.data_preprocessor)

    @property
    def model(self) -> EncoderDecoder:
        return self._model()

    # ----- model views in pixel space ----------------------------------------------------
    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """The configured feature layer's output on ``pixels`` (``test_cfg.feature_layer``)."""
        return self.feature_fn(self.layer)(pixels)

    def feature_fn(self, layer: tuple[str, int], memo: BackboneMemo | None = None) -> Callable:
        """pixels → the output of ``layer`` (``parse_feature_layer``); with ``memo``, no-grad backbone
        outputs are kept for the batch's prediction (``BackboneMemo``)."""
        name, index = layer
        model = self.model

        def features(pixels: torch.Tensor) -> torch.Tensor:
            inputs = self.pixels.to_inputs(pixels)
            outs = model.backbone(inputs)
            if memo is not None and not torch.is_grad_enabled():
                memo.add(inputs, outs)
            if name == "logits":
                return model.decode_head.forward(model.neck(outs) if model.with_neck else outs)
            if name == "neck":
                if not model.with_neck:
                    raise ValueError("feature_layer='neck' but the model has no neck")
                outs = model.neck(outs)
            outs = outs if isinstance(outs, (list, tuple)) else [outs]
            return outs[index]

        return features

    def logits_fn(self, metas: list[dict], padding: tuple[int, int, int, int], padded_size: tuple[int, int]):
        left, right, top, bottom = padding

        def logits(pixels: torch.Tensor) -> torch.Tensor:
            inputs = F.pad(self.pixels.to_inputs(pixels), (left, right, top, bottom), value=self.pixels.pad_val)
            out = self.model.inference(inputs, [dict(m) for m in metas])  # copies: slide mode edits metas
            return out[..., top:padded_size[0] - bottom, left:padded_size[1] - right]

        return logits

    def reuses_backbone(self, run: EquiRun) -> bool:
        """Whether ``run`` predicts the images its defense lets through from the backbone outputs of their score
        (``BackboneMemo``): by default detect-then-defend does, what keeps its clean traffic cheap; the run's
        ``reuse_backbone`` view can say otherwise (e.g. to measure what the reuse saves). Other defenses
        recompute: few of their rows would be served, and those would move published last bits."""
        pipeline = run.pipeline or self.pipeline
        defense = pipeline.defense
        return run.view("reuse_backbone", defense is not None and defense.reuses_score_features, VIEW_KEYS)

    # ----- one batch ----------------------------------------------------------------------
    def predict(self, inputs: torch.Tensor, data_samples: list | None, stock_predict: Callable,
                run: EquiRun = CONFIGURED_RUN) -> list:
        """``stock_predict`` of the batch as ``run`` asks: attacked, defended and scored by its pipeline (the
        configured one when it names none)."""
        pipeline = run.pipeline or self.pipeline
        layer = run.view("feature_layer", self.layer, VIEW_KEYS)
        attack_on, defend_on = pipeline.active(run.scenario)
        if not (attack_on or defend_on or run.record_scores):
            return stock_predict(inputs, data_samples)
        if data_samples is None:
            raise ValueError("equi-ext needs data samples (image metas) to defend or attack a batch")
        check_image_batch(inputs, name="inputs")
        if len(data_samples) != inputs.shape[0]:
            raise ValueError(f"got {len(data_samples)} data samples for a batch of {inputs.shape[0]} inputs")
        if attack_on and any(not hasattr(s, "gt_sem_seg") for s in data_samples):
            raise ValueError("an attack needs ground truth: the test pipeline must load annotations "
                             "(LoadAnnotations) so data samples carry gt_sem_seg")
        memo = BackboneMemo() if self.reuses_backbone(run) and not self.model.backbone.training else None
        batch = SegBatch(self, inputs, data_samples, self.feature_fn(layer, memo))
        scores = pipeline.process(batch, run.scenario, run.record_scores, run.sink)
        with memo.serving(self.model.backbone) if memo is not None else contextlib.nullcontext():
            results = stock_predict(batch.new_inputs, data_samples)
        for sample, score in zip(results, scores):
            if score is not None:
                sample.set_metainfo({SCORE_KEY: score})
        return results


#: The view settings an MMSeg run (``EquiRun.views``) may set.
VIEW_KEYS = ("feature_layer", "reuse_backbone")


class SegBatch(PixelBatch):
    """An MMSeg batch in pixel space: images grouped by padding and original shape (the defense sees each
    image without the preprocessor's padding), ground truth from ``gt_sem_seg``, the task loss the pixel
    cross-entropy of the model's ``inference`` (whole or sliding window)."""

    def __init__(self, rt: EquiRuntime, inputs: torch.Tensor, data_samples: list, features: Callable) -> None:
        super().__init__(rt.model, inputs.shape[0])
        self.rt, self.inputs, self.samples, self.features = rt, inputs, data_samples, features
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
        return self.features

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
    """A model whose ``predict`` is not equi-ext's (a subclass that overrides it, e.g. MMSeg's ``DepthEstimator``,
    or any ``EncoderDecoder`` after :func:`unpatch`) would never reach the defense: refuse it rather than
    evaluate it undefended."""
    if not isinstance(model, EncoderDecoder):
        raise TypeError(f"equi-ext's MMSeg path supports EncoderDecoder-based models; got {type(model).__name__}")
    if type(model).predict is not _predict:
        raise TypeError(f"{type(model).__name__}.predict is not equi-ext's (the class overrides it, or "
                        f"equi_ext.mmseg.unpatch() restored EncoderDecoder's): its test_cfg.defense/attack would be "
                        f"ignored, so equi-ext refuses it; use model.type='EquiEncoderDecoder'")


#: model → (the equi-ext settings of its test_cfg, the runtime built from them); weak, so models are freed as usual.
_RUNTIMES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _settings_key(test_cfg: Any) -> str:
    return repr([(key, (test_cfg or {}).get(key)) for key in TEST_CFG_KEYS])


def runtime(model: EncoderDecoder) -> EquiRuntime:
    """The model's equi-ext runtime, built from ``model.test_cfg`` once and again only when its equi-ext keys
    change."""
    model = unwrapped(model)
    check_wrappable(model)
    key = _settings_key(model.test_cfg)
    cached = _RUNTIMES.get(model)
    if cached is None or cached[0] != key:
        cached = _RUNTIMES[model] = (key, EquiRuntime(model))
    return cached[1]


def configure(model: EncoderDecoder, **test_cfg: Any) -> EquiRuntime:
    """Change ``model.test_cfg`` keys (``defense``, ``attack``, ``feature_layer``, ``score``) for good and
    rebuild the runtime. To evaluate other settings for a while, use :func:`scenario`, which leaves the model
    as it is."""
    model = unwrapped(model)
    for key, value in test_cfg.items():
        model.test_cfg[key] = value
    _RUNTIMES.pop(model, None)
    return runtime(model)


@contextlib.contextmanager
def scenario(model: EncoderDecoder, name: str | None, *, record_scores: bool = False,
             **test_cfg: Any) -> Iterator[EquiRun]:
    """Make scenario ``name`` (one of ``SCENARIOS``; None = as configured) the model's active run for the block,
    with the ``test_cfg`` keys given (``defense``, ``attack``, ``score``, ``feature_layer``) in place of the
    configured ones; yields the ``EquiRun``. With ``record_scores`` each predicted data sample carries its image's
    score as ``metainfo['equi_score']`` (``EquiScoreMetric`` averages them). The settings start from
    ``model.test_cfg``, not from an enclosing scenario's; the model itself, its ``test_cfg`` included, is not
    changed."""
    model = unwrapped(model)
    rt = runtime(model)
    pipeline, views = rt.pipeline, {}
    if test_cfg:
        pipeline, layer = build_equi_components({**(model.test_cfg or {}), **test_cfg})
        if "feature_layer" in test_cfg:
            views["feature_layer"] = layer
    with running(model, EquiRun(name, pipeline, record_scores=record_scores, views=views)) as run:
        yield run


def configures_equi(test_cfg: Any) -> bool:
    """Whether ``test_cfg`` asks for a defense or an attack."""
    cfg = test_cfg or {}
    return cfg.get("defense") is not None or cfg.get("attack") is not None


# ----- the test-time flow, as EquiEncoderDecoder's methods and (installed) EncoderDecoder's --------------------
_STOCK = {name: vars(EncoderDecoder)[name] for name in ("__init__", "predict", "loss")}


@functools.wraps(_STOCK["__init__"])
def _init(self, *args, **kwargs):
    """The stock ``__init__``, then equi-ext's settings checked (bad names, keys or budgets fail at build, not at
    the first batch) and its runtime built."""
    _STOCK["__init__"](self, *args, **kwargs)
    adversarial_settings(self.train_cfg)
    check_test_cfg_keys(self.test_cfg)
    if configures_equi(self.test_cfg):
        runtime(self)


@functools.wraps(_STOCK["predict"])
def _predict(self, inputs, data_samples=None):
    run = active_run(self)
    if run is CONFIGURED_RUN and not configures_equi(self.test_cfg):
        return _STOCK["predict"](self, inputs, data_samples)
    return runtime(self).predict(inputs, data_samples, lambda x, s: _STOCK["predict"](self, x, s), run)


@functools.wraps(_STOCK["loss"])
def _loss(self, inputs, data_samples):
    settings = adversarial_settings(self.train_cfg)
    if settings is None:
        return _STOCK["loss"](self, inputs, data_samples)
    return adversarial_loss(self, settings, inputs, data_samples, lambda x, s: _STOCK["loss"](self, x, s))


_EQUI_METHODS = {"__init__": _init, "predict": _predict, "loss": _loss}


@MODELS.register_module()
class EquiEncoderDecoder(EncoderDecoder):
    """An ``EncoderDecoder`` that honours ``test_cfg.defense`` / ``attack`` / ``score`` / ``feature_layer`` and
    ``train_cfg.adversarial`` whether or not :func:`install` is in force. It adds no weights, so its checkpoints
    are interchangeable with the stock model's."""

    __init__ = _init
    predict = _predict
    loss = _loss


def install() -> None:
    """Give every ``EncoderDecoder`` equi-ext's ``__init__``, ``predict`` and ``loss`` (idempotent), so that
    ``model.test_cfg.defense`` / ``attack`` work on any existing config: importing ``equi_ext.mmseg`` calls it.
    Without those keys and without an active run the stock methods run untouched. :func:`unpatch` undoes it."""
    for name, method in _EQUI_METHODS.items():
        setattr(EncoderDecoder, name, method)


def unpatch() -> None:
    """Give ``EncoderDecoder`` its stock methods back (idempotent): models built afterwards, and ``predict`` of
    ones built before, are MMSeg's own; ``model.type='EquiEncoderDecoder'`` keeps equi-ext's flow."""
    for name, method in _STOCK.items():
        setattr(EncoderDecoder, name, method)
