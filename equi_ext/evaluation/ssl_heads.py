"""Train the self-supervised head of the ``rotation`` or ``contrastive`` baseline on a frozen model.

The SSL baselines purify an input by optimising a self-supervised loss on the model's own features, so
their head must read exactly the dense view the defense uses at test time: for a ``.py``
(MMSegmentation) config the runtime's feature function (``model.test_cfg.feature_layer``, default the
last backbone output); for a ``.yaml`` (Detectron2) config the FPN maps of ``EQUI.FPN_LEVELS``. Training
images are the config's training split loaded as at test time (no augmentation of the model's own), so
features match those seen by the defense. A seeded 20% of them is held out for the reported metric.
The head records its feature view; a head used with another view is refused at the first defended
image, naming both.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from ..core.checkpoints import load_weights
from ..core.defense import frozen_model
from ..core.ssl import KINDS, save_head, train_head
from ..core.validation import SettingsError


def mmseg_view(config: str, checkpoint: str, data_root: str | None, num_images: int | None, work_dir: str):
    """(model, feature_fn, clean RGB pixel images, feature spec) of an MMSeg config."""
    from mmengine.config import Config
    from mmengine.dataset import pseudo_collate
    from mmengine.runner import Runner
    from mmseg.registry import DATASETS

    from .. import mmseg as equi_mmseg

    cfg = Config.fromfile(config)
    cfg.work_dir = work_dir
    cfg.default_hooks.pop("visualization", None)
    cfg.log_level = "WARNING"
    cfg.load_from = None
    runner = Runner.from_cfg(cfg)
    load_weights(runner.model, checkpoint, framework="MMEngine")
    model = runner.model.eval()
    dataset_cfg = cfg.train_dataloader.dataset.copy()
    dataset_cfg.pipeline = cfg.test_pipeline  # the images as the defense sees them: test-time resize only
    if data_root:
        dataset_cfg.data_root = data_root
    if num_images:
        dataset_cfg.indices = num_images
    dataset = DATASETS.build(dataset_cfg)
    rt = equi_mmseg.runtime(model)
    images = []
    with torch.no_grad():
        for i in range(len(dataset)):
            data = model.data_preprocessor(pseudo_collate([dataset[i]]), False)
            left, right, top, bottom = data["data_samples"][0].metainfo.get("padding_size", (0, 0, 0, 0))
            h, w = data["inputs"].shape[-2:]
            images.append(rt.pixels.to_pixels(data["inputs"][:, :, top:h - bottom, left:w - right])[0])
    layer = cfg.model.test_cfg.get("feature_layer", "backbone")
    return model, rt.features, images, f"mmseg:{Path(config).name}:feature_layer={layer}"


def detectron2_view(config: str, checkpoint: str, data_root: str | None, num_images: int | None,
                    opts: Sequence[str]):
    """(model, feature_fn, clean RGB pixel images, feature spec) of a Detectron2 config."""
    from detectron2.data import DatasetCatalog, DatasetMapper
    from detectron2.modeling import build_model

    from ..detectron2 import load_config, register_from_cfg
    from ..detectron2.evaluation import load_weights as load_detectron2_weights
    from ..detectron2.modeling.objective import MaskRCNNObjective

    cfg = load_config(config, list(opts))
    cfg.MODEL.META_ARCHITECTURE = "EquiGeneralizedRCNN"  # its differentiable image_list is the defense's
    cfg.EQUI.DEFENSE, cfg.EQUI.ATTACK = "none", ""
    if data_root:
        cfg.EQUI.SYNTHETIC_ROOT = data_root
    register_from_cfg(cfg)
    if not cfg.DATASETS.TRAIN:
        raise SettingsError("DATASETS.TRAIN is empty: name the training split")
    model = build_model(cfg)
    load_detectron2_weights(model, checkpoint)
    model.eval()
    records = DatasetCatalog.get(cfg.DATASETS.TRAIN[0])[:num_images]
    mapper = DatasetMapper(cfg, is_train=False)  # test-time resize, the defense's input
    images = [model.to_pixels(mapper(record)["image"]) for record in records]
    features = MaskRCNNObjective(model, model.image_list, cfg.EQUI.FPN_LEVELS)
    return model, features, images, f"detectron2:{Path(config).name}:fpn={features.levels}"


def train_ssl_head(*, config: str | Path, checkpoint: str | Path, kind: str, out: str | Path, iters: int = 1000,
                   seed: int = 0, data_root: str | Path | None = None, num_images: int | None = None,
                   opts: Sequence[str] = (), work_dir: str | Path = "work_dirs/train_ssl_head") -> dict:
    """Train a ``kind`` head (``iters`` optimiser steps, ``seed``) on the frozen model of ``config`` +
    ``checkpoint`` over its training split (``data_root`` replaces the config's, Detectron2:
    ``EQUI.SYNTHETIC_ROOT``; ``num_images``: only the first N; ``opts``: Detectron2 KEY VALUE overrides;
    ``work_dir``: MMEngine's log folder), save it to ``out`` with its metrics and feature view, print
    one summary line and return the metrics (held-out metric, its chance level, image counts, settings).

    Raises:
        ValueError: a missing config or checkpoint, ``num_images`` < 4 (train and held-out images), a
            config that is neither ``.py`` nor ``.yaml``, an unknown ``kind``, or a config without a
            training split. Errors of the framework or the head's checks (``FileNotFoundError``,
            ``KeyError``, ``ValueError``) propagate as raised.
    """
    config, checkpoint = str(config), str(checkpoint)
    if not Path(config).is_file():
        raise SettingsError(f"config file {config!r} does not exist")
    if not Path(checkpoint).is_file():
        raise SettingsError(f"checkpoint {checkpoint!r} does not exist")
    if num_images is not None and num_images < 4:
        raise SettingsError(f"num_images must be >= 4 (train and held-out images); got {num_images}")
    if not config.endswith((".py", ".yaml", ".yml")):
        raise SettingsError(f"config must be an MMSeg .py or a Detectron2 .yaml file; got {config!r}")
    if kind not in KINDS:
        raise SettingsError(f"unknown kind {kind!r}; valid: {', '.join(KINDS)}")
    data_root = str(data_root) if data_root else None
    if config.endswith(".py"):
        model, features, images, spec = mmseg_view(config, checkpoint, data_root, num_images, str(work_dir))
    else:
        model, features, images, spec = detectron2_view(config, checkpoint, data_root, num_images, opts)
    with frozen_model(model):
        head, metrics = train_head(kind, features, images, iters=iters, seed=seed, feature_spec=spec)
    metrics.update(kind=kind, iters=iters, seed=seed, feature_spec=spec)
    save_head(head, out, metrics)
    print(f"{kind} head for {spec}: {metrics['metric']} {metrics['value']:.3f} (chance {metrics['chance']:.3f}) "
          f"on {metrics['held_out_images']} held-out images; trained on {metrics['train_images']}; wrote {out}")
    return metrics
