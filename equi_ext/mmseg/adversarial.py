"""Adversarial training of any MMSeg ``EncoderDecoder`` by one config key, ``model.train_cfg.adversarial``::

    model = dict(train_cfg=dict(adversarial=dict(attack=dict(type='pgd', eps=4, steps=2))))

Importing ``equi_ext.mmseg`` wraps ``EncoderDecoder.loss``: with the key set, each training batch is attacked in
pixel space (the preprocessor's normalised inputs → RGB 0–255 → attack → back), only inside each image (never in
the preprocessor's padding), with the model's own training loss as the objective; the step's losses are then
those of the attacked batch (or a clean/attacked mix, ``clean_weight``). Without the key ``loss`` is MMSeg's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from mmseg.models.segmentors import EncoderDecoder

from ..attacks.training import AdversarialTraining, total_loss
from ..core.registry import did_you_mean

#: The ``model.train_cfg`` keys equi-ext reads.
TRAIN_CFG_KEYS = ("adversarial",)


def adversarial_settings(train_cfg: Any) -> AdversarialTraining | None:
    """The adversarial-training settings of a ``model.train_cfg`` (None without the key); a near miss of the key
    (``adversarial_training``, ``adversarail``) is a ``KeyError`` rather than a run that quietly trains
    without attacks, and a bad setting fails here, when the model is built."""
    train_cfg = train_cfg or {}
    for key in train_cfg:
        if key in TRAIN_CFG_KEYS:
            continue
        hint = did_you_mean(key, TRAIN_CFG_KEYS) or (" (did you mean 'adversarial'?)"
                                                     if key.lower().startswith("adv") else "")
        if hint:
            raise KeyError(f"model.train_cfg.{key} is not an equi-ext or MMSeg setting{hint}")
    return AdversarialTraining.from_config(train_cfg.get("adversarial"), where="model.train_cfg.adversarial")


def image_region(data_samples: list, shape: tuple[int, int], device: torch.device) -> torch.Tensor:
    """(N, 1, H, W) true inside each image of a padded training batch (its ``padding_size`` from MMSeg's
    ``stack_batch``: left, right, top, bottom)."""
    h, w = shape
    region = torch.zeros(len(data_samples), 1, h, w, dtype=torch.bool, device=device)
    for i, sample in enumerate(data_samples):
        left, right, top, bottom = sample.metainfo.get("padding_size", (0, 0, 0, 0))
        region[i, :, top:h - bottom, left:w - right] = True
    return region


def adversarial_loss(model: EncoderDecoder, settings: AdversarialTraining, inputs: torch.Tensor, data_samples: list,
                     stock_loss: Callable[[torch.Tensor, list], dict]) -> dict:
    """The training losses of ``inputs`` attacked as ``settings`` say (see the module docstring)."""
    from .segmentor import PixelSpace

    if data_samples is None or any(not hasattr(s, "gt_sem_seg") for s in data_samples):
        raise ValueError("adversarial training needs the training batch's ground truth (gt_sem_seg)")
    space = PixelSpace(model.data_preprocessor)
    pixels = space.to_pixels(inputs)
    targets = torch.stack([s.gt_sem_seg.data[0] for s in data_samples]).to(inputs.device).long()
    metas = [s.metainfo for s in data_samples]

    def logits(x: torch.Tensor) -> torch.Tensor:
        return model.encode_decode(space.to_inputs(x), metas)

    adv = settings.perturb(
        model, pixels, targets, loss_fn=lambda x: total_loss(stock_loss(space.to_inputs(x), data_samples)),
        logits_fn=logits if settings.needs_logits else None, region=image_region(data_samples, inputs.shape[-2:],
                                                                                  inputs.device),
        ignore_index=getattr(model.decode_head, "ignore_index", 255))
    attacked = stock_loss(space.to_inputs(adv), data_samples)
    clean = stock_loss(inputs, data_samples) if settings.clean_weight else None
    return settings.combine(clean, attacked)
