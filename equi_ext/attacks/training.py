"""Adversarial training (Madry et al. 2018, arXiv:1706.06083): each training batch is replaced by the attack
that maximises the model's own training loss inside the ε ball, then the usual step is taken on it.

Framework-free: an adapter hands over the batch in pixels, the training loss as a function of pixels, and
where the image lies in each (padded) row; :class:`AdversarialTraining` returns the attacked pixels and
combines the clean and the attacked losses.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..core.defense import frozen_model
from ..core.registry import did_you_mean
from ..core.validation import DEFAULT_PIXEL_RANGE, PixelRange
from .base import attack_kwargs
from .registry import ATTACKS

#: How BatchNorm (and any other train/eval-dependent layer) behaves while the attack runs: ``'eval'`` uses the
#: running statistics, ``'train'`` the batch's own (running statistics are restored after the attack either way).
BN_MODES = ("eval", "train")


class AdversarialTraining:
    """Settings of adversarial training, checked when built.

    Args:
        attack: a registered attack's name or config (``dict(type='pgd', eps=4, steps=2)``); budgets in pixel
            levels. It attacks the model itself, so attacks through a defense or on features are refused.
        clean_weight: the training loss is ``clean_weight · L(x) + (1 − clean_weight) · L(x_adv)``; 0 (the
            default) trains on the attacked batch alone, as Madry et al.; a positive weight costs one more forward
            and backward of the clean batch.
        bn: ``'eval'`` (default) or ``'train'``, see ``BN_MODES``; the model's ``training`` flags,
            ``requires_grad`` and buffers are as before the attack when the step's loss is computed.
    """

    KEYS = ("attack", "clean_weight", "bn")

    def __init__(self, *, attack: str | Mapping[str, Any] = "pgd", clean_weight: float = 0.0, bn: str = "eval") -> None:
        cfg = {"type": attack} if isinstance(attack, str) else dict(attack)
        if not isinstance(cfg.get("type"), str):
            raise TypeError(f"attack must be an attack name or a dict with a 'type' key; got {attack!r}")
        self.attack_cls = ATTACKS.check_keys(cfg["type"], [k for k in cfg if k != "type"])
        needs = self.attack_cls.needs(cfg)
        if needs & {"defense", "features"}:
            raise ValueError(f"adversarial training attacks the model's training loss; attack {cfg['type']!r} "
                             f"needs {' and '.join(sorted(needs & {'defense', 'features'}))}, which training has not")
        self.attack_cfg = cfg
        self.needs_logits = "logits" in needs
        # built once with stand-in views, so a bad budget fails with the config, not at the first batch
        self._build(loss_fn=lambda x, t: x.sum(), logits_fn=lambda x: x)
        if isinstance(clean_weight, bool) or not isinstance(clean_weight, (int, float)) or not 0 <= clean_weight < 1:
            raise ValueError(f"clean_weight must be a number in [0, 1) (1 would be standard training); "
                             f"got {clean_weight!r}")
        self.clean_weight = float(clean_weight)
        if bn not in BN_MODES:
            raise ValueError(f"bn must be one of {BN_MODES}; got {bn!r}")
        self.bn = bn

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None, where: str = "adversarial") -> AdversarialTraining | None:
        """``cfg`` (a dict of ``KEYS``; ``None`` = no adversarial training) → settings; an unknown key is a
        ``KeyError`` naming ``where``, the key and the keys there are."""
        if cfg is None:
            return None
        if not isinstance(cfg, Mapping):
            raise TypeError(f"{where} must be a dict with the keys {', '.join(cls.KEYS)}; got {cfg!r}")
        for key in cfg:
            if key not in cls.KEYS:
                raise KeyError(f"{where}.{key} is not a setting of adversarial training{did_you_mean(key, cls.KEYS)}; "
                               f"the settings are {', '.join(cls.KEYS)}")
        return cls(**dict(cfg))

    def __repr__(self) -> str:
        return f"AdversarialTraining(attack={self.attack_cfg!r}, clean_weight={self.clean_weight}, bn={self.bn!r})"

    def _build(self, *, loss_fn: Callable, logits_fn: Callable | None, ignore_index: int | None = None,
               pixel_range: PixelRange = DEFAULT_PIXEL_RANGE):
        extra = {} if ignore_index is None or "ignore_index" in self.attack_cfg else {"ignore_index": ignore_index}
        return self.attack_cls(**attack_kwargs(self.attack_cls, self.attack_cfg, loss_fn=loss_fn, logits_fn=logits_fn,
                                               feature_fn=None, preprocessor=None, pixel_range=pixel_range, **extra))

    def perturb(self, model: nn.Module, pixels: torch.Tensor, targets: torch.Tensor, *,
                loss_fn: Callable[[torch.Tensor], torch.Tensor], logits_fn: Callable | None = None,
                region: torch.Tensor | None = None, ignore_index: int = 255,
                image_seeds: Sequence[int] | None = None,
                pixel_range: PixelRange = DEFAULT_PIXEL_RANGE) -> torch.Tensor:
        """The attacked batch: ``pixels`` (N, 3, H, W) moved within the attack's budget to raise ``loss_fn``
        (the training loss of a pixel batch, a scalar), only where ``region`` (N, 1, H, W) is true (the images,
        not the preprocessor's padding). ``targets`` (N, H, W) feed pixel-weighting attacks (``logits_fn``:
        pixels → (N, C, h, w)). ``model`` is left as found: parameters, buffers, ``requires_grad``,
        ``training``."""
        clean = pixels.detach()

        def inside(x: torch.Tensor) -> torch.Tensor:
            return x if region is None else torch.where(region, x, clean)

        attack = self._build(loss_fn=lambda x, t: loss_fn(inside(x)),
                             logits_fn=(lambda x: logits_fn(inside(x))) if logits_fn is not None else None,
                             ignore_index=ignore_index, pixel_range=pixel_range)
        with frozen_model(model):
            if self.bn == "eval":
                model.eval()
            adv = attack(clean, targets, image_seeds=image_seeds)
        return inside(adv).detach()

    def combine(self, clean: Mapping[str, Any] | None, attacked: Mapping[str, Any]) -> dict[str, Any]:
        """The step's losses: each ``loss`` key weighted ``clean_weight`` on the clean batch and the rest on the
        attacked one; other entries (accuracies, logged values) are the attacked batch's."""
        if clean is None or self.clean_weight == 0:
            return dict(attacked)
        w = self.clean_weight

        def mix(a: Any, b: Any) -> Any:
            if isinstance(b, (list, tuple)):
                return [w * x + (1 - w) * y for x, y in zip(a, b)]
            return w * a + (1 - w) * b

        return {key: mix(clean[key], value) if "loss" in key and key in clean else value
                for key, value in attacked.items()}


def total_loss(losses: Mapping[str, Any]) -> torch.Tensor:
    """The sum of a loss dict's ``loss`` entries (lists summed too), as MMEngine and Detectron2 optimise it."""
    total = 0
    for key, value in losses.items():
        if "loss" in key:
            total = total + (sum(value) if isinstance(value, (list, tuple)) else value)
    if not isinstance(total, torch.Tensor):
        raise ValueError(f"the training losses hold no 'loss' entry to attack; got keys {sorted(losses)}")
    return total
