"""Attacks on dense prediction that differ only in the objective they maximise.

All share the loop in ``base.Attack``. Those that weight pixels need ``logits_fn``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from ..core.validation import check_pixel_range
from .base import Attack, check_labels, pixel_cross_entropy, resize_logits
from .registry import ATTACKS


def _valid_pixels(targets: torch.Tensor, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask of labelled pixels, labels with ignored pixels set to 0 so they can index)."""
    valid = targets != ignore_index
    return valid, torch.where(valid, targets, torch.zeros_like(targets)).long()


def _masked_mean(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    return (values * valid).sum() / valid.sum().clamp(min=1)


def _true_and_best_other(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel logit of the label and the largest logit of any other class."""
    true = logits.gather(1, labels[:, None])[:, 0]
    others = logits.scatter(1, labels[:, None], float("-inf"))
    return true, others.max(dim=1).values


class LogitsAttack(Attack):
    """Base for attacks whose objective needs per-pixel logits."""

    needs_logits = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.logits_fn is None:
            raise ValueError(f"{type(self).__name__} weights pixels and needs logits_fn(images) -> (N, C, h, w)")

    def pixel_logits(self, adv: torch.Tensor, targets: torch.Tensor):
        logits = resize_logits(self.logits_fn(adv), targets)
        check_labels(targets, logits.shape[1], self.ignore_index)
        valid, labels = _valid_pixels(targets, self.ignore_index)
        return logits, valid, labels


@ATTACKS.register("pgd")
class PGD(Attack):
    """Projected gradient descent on the task loss, random start (Madry et al. 2018, arXiv:1706.06083)."""


@ATTACKS.register("ifgsm")
class IFGSM(Attack):
    """Iterative FGSM for segmentation (Arnab et al. 2018, arXiv:1711.09856): start at x, step 1 level,
    min(ε + 4, 1.25ε) steps unless given, ε taken at most as the pixel range (no pixel moves further)."""

    random_start = False

    def __init__(self, *, eps: float = 4.0, steps: int | None = None, step_size: float | None = None,
                 **kwargs: Any) -> None:
        if steps is None and isinstance(eps, (int, float)) and not isinstance(eps, bool):
            low, high = check_pixel_range(kwargs.get("pixel_range"))
            reach = min(float(eps), float(high) - float(low))
            steps = max(1, int(math.ceil(min(reach + 4, 1.25 * reach)))) if reach == reach else 1
        elif steps is None:
            steps = 1
        super().__init__(eps=eps, steps=steps, step_size=1.0 if step_size is None else step_size, **kwargs)


@ATTACKS.register("mim")
class MIM(Attack):
    """Momentum iterative method (Dong et al. 2018, arXiv:1710.06081): accumulate L1-normalised gradients."""

    def __init__(self, *, decay: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.decay = float(decay)

    def direction(self, grad: torch.Tensor, state: dict) -> torch.Tensor:
        normalised = grad / grad.abs().flatten(1).mean(dim=1).clamp(min=1e-12).view(-1, 1, 1, 1)
        state["momentum"] = self.decay * state.get("momentum", 0) + normalised
        return super().direction(state["momentum"], state)


@ATTACKS.register("cw")
class CW(LogitsAttack):
    """PGD on the Carlini–Wagner margin (arXiv:1608.04644), per pixel: min(max_{j≠y} z_j − z_y, κ)."""

    def __init__(self, *, kappa: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.kappa = float(kappa)

    def objective(self, adv, targets, step):
        logits, valid, labels = self.pixel_logits(adv, targets)
        true, other = _true_and_best_other(logits, labels)
        return _masked_mean((other - true).clamp(max=self.kappa), valid)


@ATTACKS.register("houdini")
class Houdini(LogitsAttack):
    """Houdini (Cisse et al. 2017, arXiv:1707.05373) with a unit per-pixel task loss.

    The stochastic margin P_γ[z_y − z_ŷ < γ], γ ~ N(0, 1), is the probit Φ(z_ŷ − z_y): a smooth
    surrogate of the pixel error count, whose gradient peaks on pixels near the boundary.
    """

    def objective(self, adv, targets, step):
        logits, valid, labels = self.pixel_logits(adv, targets)
        true, other = _true_and_best_other(logits, labels)
        return _masked_mean(0.5 * (1 + torch.erf((other - true) / math.sqrt(2))), valid)


@ATTACKS.register("segpgd")
class SegPGD(LogitsAttack):
    """SegPGD (Gu et al., ECCV 2022, arXiv:2207.12391): cross-entropy split into correctly and
    wrongly classified pixels, weighted (1 − λ_t) and λ_t with λ_t = t / (2T)."""

    def objective(self, adv, targets, step):
        logits, valid, labels = self.pixel_logits(adv, targets)
        ce = F.cross_entropy(logits, labels, reduction="none")
        correct = (logits.argmax(dim=1) == labels).to(logits.dtype).detach()
        lam = step / (2 * self.steps)
        return _masked_mean(((1 - lam) * correct + lam * (1 - correct)) * ce, valid)


@ATTACKS.register("cospgd")
class CosPGD(LogitsAttack):
    """CosPGD (Agnihotri et al., ICML 2024, arXiv:2302.02213): per-pixel cross-entropy weighted by the
    (detached) cosine between the softmax and the one-hot label, so pixels still close to their
    label dominate."""

    def objective(self, adv, targets, step):
        logits, valid, labels = self.pixel_logits(adv, targets)
        ce = F.cross_entropy(logits, labels, reduction="none")
        one_hot = F.one_hot(labels, logits.shape[1]).permute(0, 3, 1, 2).to(logits.dtype)
        weight = F.cosine_similarity(logits.softmax(dim=1), one_hot, dim=1).detach()
        return _masked_mean(weight * ce, valid)


@ATTACKS.register("targeted")
class Targeted(Attack):
    """Push predictions towards a target map: ``attack(images, target_maps)`` minimises their CE."""

    def objective(self, adv, targets, step):
        if self.loss_fn is not None:
            return -self.loss_fn(adv, targets)
        return -pixel_cross_entropy(self.logits_fn(adv), targets, self.ignore_index)
