"""APGD for dense prediction and the SEA ensemble, through the defense.

APGD (Croce & Hein, ICML 2020, arXiv:2003.01690) replaces PGD's fixed step by a per-image step
size that starts at 2·radius (the radius capped at 8 levels: ``Attack.step_scale``) and halves at checkpoints when
progress stalls, with momentum 0.75.
SEA (Croce, Singh, Hein, ECCV 2024, arXiv:2306.12941) runs APGD with three dense losses, each over a
shrinking radius schedule 2ε → 1.5ε → ε, and keeps, per image, the worst result.

Through a test-time defense (``dict(type='bpda', attack=dict(type='apgd', ...), eot_samples=n)``) both
attack the *deployed* pipeline: every iterate is purified by the defense as deployed (its own randomness),
the model predicts on the purified image, and the gradient taken there is applied to the iterate (BPDA,
identity backward), averaged with ``n - 1`` fresh draws of the defense's randomness (EOT). Two "best"
points are kept per image: ``x_best_loss`` (highest plain cross-entropy, which drives the restarts; the
masked losses are not monotone in progress) and ``x_best_adv`` (lowest pixel accuracy, ignored pixels
counted correct, ties to the later iterate), which is what the attack returns. Without dense logits
(Detectron2) APGD runs on the adapter's task loss and returns each image's highest-loss iterate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..core.validation import PixelRange
from ..progress import note_step
from .base import Attack, LogitsFn, LossFn, check_labels, resize_logits
from .pixelwise import _valid_pixels
from .registry import ATTACKS

#: Per-pixel losses of dense APGD; ``task`` is the adapter's own task loss (the only one without logits).
DENSE_LOSSES = ("ce", "masked_ce", "balanced_ce", "js")
LOSSES = ("task", *DENSE_LOSSES)
#: SEA's losses, run one after the other from the same start.
SEA_LOSSES = ("masked_ce", "balanced_ce", "js")


def inverse_frequency_weights(targets: torch.Tensor, num_classes: int, ignore_index: int) -> torch.Tensor:
    """(N, C) weights 1/N_y of each image's own labelled pixels, normalised to sum 1 per image (absent
    classes 0): the fallback of ``balanced_ce`` when no training-split ``class_weights`` are given."""
    valid, labels = _valid_pixels(targets, ignore_index)
    counts = torch.stack([torch.bincount(lab[v], minlength=num_classes)[:num_classes]
                          for lab, v in zip(labels, valid)]).to(torch.float32)
    weights = torch.where(counts > 0, 1.0 / counts.clamp(min=1), torch.zeros_like(counts))
    return weights / weights.sum(dim=1, keepdim=True).clamp(min=1e-12)


def dense_loss(name: str, logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = 255,
               class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """(N,) per-image loss ``name`` (one of ``DENSE_LOSSES``): per pixel, averaged over all H·W pixels,
    ignored pixels contributing 0.

    ``ce`` cross-entropy; ``masked_ce`` cross-entropy of the pixels still classified correctly;
    ``balanced_ce`` that, weighted by ``class_weights[y]`` (C weights summing to 1; default: each image's
    inverse label frequencies); ``js`` the Jensen–Shannon divergence between the softmax and the one-hot
    label (bounded, so no mask is needed).
    """
    logits = resize_logits(logits, targets)
    check_labels(targets, logits.shape[1], ignore_index)
    valid, labels = _valid_pixels(targets, ignore_index)
    if name == "js":
        p = logits.float().softmax(dim=1)
        one_hot = F.one_hot(labels, logits.shape[1]).permute(0, 3, 1, 2).to(p.dtype)
        m = (p + one_hot) / 2
        kl_p = (p * (p.clamp(min=1e-12).log() - m.clamp(min=1e-12).log())).sum(dim=1)
        kl_y = -m.gather(1, labels[:, None])[:, 0].clamp(min=1e-12).log()
        per_pixel = (kl_p + kl_y) / 2
    else:
        per_pixel = F.cross_entropy(logits.float(), labels, reduction="none")
        if name in ("masked_ce", "balanced_ce"):
            per_pixel = per_pixel * (logits.argmax(dim=1) == labels).detach()
        if name == "balanced_ce":
            if class_weights is None:
                weights = inverse_frequency_weights(targets, logits.shape[1], ignore_index)
            else:
                if class_weights.numel() != logits.shape[1]:
                    raise ValueError(f"class_weights has {class_weights.numel()} entries but the model predicts "
                                     f"{logits.shape[1]} classes")
                weights = class_weights.to(logits.device).expand(logits.shape[0], -1)
            per_pixel = per_pixel * weights.gather(1, labels.flatten(1)).view_as(per_pixel)
        elif name != "ce" and name != "masked_ce":
            raise ValueError(f"unknown dense loss {name!r}; valid: {', '.join(DENSE_LOSSES)}")
    return (per_pixel * valid).flatten(1).mean(dim=1)


def pixel_accuracy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """(N,) fraction of each image's pixels predicted right, ignored pixels counted correct."""
    logits = resize_logits(logits, targets)
    valid, labels = _valid_pixels(targets, ignore_index)
    return ((logits.argmax(dim=1) == labels) | ~valid).flatten(1).float().mean(dim=1)


def checkpoints(steps: int) -> list[int]:
    """Iterations after which APGD checks its progress: the first interval max(1, ⌊0.22N⌋), each next one
    max(1, ⌊0.03N⌋) shorter but at least max(1, ⌊0.06N⌋) (fractions 0.22, 0.41, 0.57, 0.70, 0.80, … for large
    N; a short run, such as one of SEA's stages, checks at every iteration after its first interval)."""
    interval, shrink, floor = max(1, int(0.22 * steps)), max(1, int(0.03 * steps)), max(1, int(0.06 * steps))
    points, at = [], interval
    while at <= steps:
        points.append(at)
        interval = max(interval - shrink, floor)
        at += interval
    return points


def step_to_halve(rises: torch.Tensor, interval: int, rho: float, halved_last: torch.Tensor,
                  best_loss: torch.Tensor, best_at_last_check: torch.Tensor) -> torch.Tensor:
    """(N,) bool: the images whose step size a checkpoint halves: the tracking loss rose in at most
    ``rho`` of the ``interval`` steps since the last checkpoint, or it was not halved there and the best
    tracking loss has not improved since. As in the authors' code, the first checkpoint counts as one that
    halved (``halved_last`` starts true), so only the first rule applies there."""
    return (rises <= rho * interval) | (~halved_last & (best_loss <= best_at_last_check))


@ATTACKS.register("apgd")
class APGD(Attack):
    """APGD (L∞) on a dense loss or the task loss (through a defense: wrap it in ``bpda``).

    Args:
        loss: one of ``LOSSES``; default ``ce`` with dense logits, else ``task``.
        class_weights: C per-class weights of ``balanced_ce`` (e.g. inverse pixel frequencies of the training
            split), normalised to sum 1; default: each image's own inverse label frequencies.
        steps: iterations N (the paper's APGD uses 100).
        momentum: α of the momentum step (0.75).
        rho: a checkpoint halves an image's step if its tracking loss rose in at most ρ of the interval's steps.
        Other arguments as :class:`Attack`; the step size is APGD's own (2·radius capped at 8 levels, halved per image).
    """

    selects_iterates = True

    def __init__(self, *, loss_fn: LossFn | None = None, logits_fn: LogitsFn | None = None, eps: float = 4.0,
                 steps: int = 100, loss: str | None = None, class_weights: Sequence[float] | None = None,
                 momentum: float = 0.75, rho: float = 0.75, random_start: bool | None = None, seed: int = 0, ignore_index: int = 255,
                 pixel_range: PixelRange | None = None, progress: bool = False) -> None:
        super().__init__(loss_fn=loss_fn, logits_fn=logits_fn, eps=eps, steps=steps, random_start=random_start,
                         seed=seed, ignore_index=ignore_index, pixel_range=pixel_range, progress=progress)
        loss = loss if loss is not None else ("ce" if logits_fn is not None else "task")
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}; got {loss!r}")
        if loss in DENSE_LOSSES and logits_fn is None:
            raise ValueError(f"{type(self).__name__} loss {loss!r} is per pixel and needs dense logits (logits_fn), "
                             "which this model does not have; use loss='task' (the model's own training losses)")
        if loss == "task" and loss_fn is None:
            raise ValueError(f"{type(self).__name__} loss 'task' needs the model's loss_fn")
        self.loss = loss
        self.class_weights = self._check_weights(class_weights, [loss])
        if not 0 < momentum <= 1 or not 0 < rho < 1:
            raise ValueError(f"momentum must be in (0, 1] and rho in (0, 1); got {momentum}, {rho}")
        self.momentum, self.rho = float(momentum), float(rho)

    @staticmethod
    def _check_weights(class_weights: Sequence[float] | None, losses: list[str]) -> torch.Tensor | None:
        """``class_weights`` as a tensor summing to 1, checked, for ``losses`` that include ``balanced_ce``."""
        if class_weights is None:
            return None
        if "balanced_ce" not in losses:
            raise ValueError(f"class_weights apply to loss 'balanced_ce' only; got {', '.join(map(repr, losses))}")
        weights = torch.as_tensor(list(class_weights), dtype=torch.float32)
        if weights.dim() != 1 or not weights.numel() or not torch.isfinite(weights).all() or (weights < 0).any() \
                or weights.sum() <= 0:
            raise ValueError(f"class_weights must be a non-empty list of finite, non-negative numbers with a "
                             f"positive sum; got {list(class_weights)!r}")
        return weights / weights.sum()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(eps={self.eps}, steps={self.steps}, loss={self.loss!r})"

    # ----- one evaluation of the deployed pipeline -----------------------------------------
    def evaluate(self, adv: torch.Tensor, targets: Any, loss: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(gradient of ``loss``, (N,) tracking loss, (N,) quality: lower = more broken) at ``adv``.

        Through a defense the first view is the deployed defense's output, so tracking and quality are
        exactly what the evaluation will see; the gradient is averaged over all views (``Attack.views``)."""
        grads = []
        for draw, purified in enumerate(self.views(adv)):
            purified.requires_grad_(True)
            if self.logits_fn is not None:
                logits = self.logits_fn(purified)
                objective = (self.task_loss(purified, targets) if loss == "task"
                             else dense_loss(loss, logits, targets, self.ignore_index, self.class_weights).sum())
                if draw == 0:
                    tracking = dense_loss("ce", logits.detach(), targets, self.ignore_index)
                    quality = pixel_accuracy(logits.detach(), targets, self.ignore_index)
            else:  # per image, so each image's own loss tracks its progress
                per_image = torch.stack([self.loss_fn(purified[i:i + 1], targets[i:i + 1])
                                         for i in range(purified.shape[0])])
                objective = per_image.sum()
                if draw == 0:
                    tracking, quality = per_image.detach(), -per_image.detach()
            (grad,) = torch.autograd.grad(objective, purified)
            grads.append(grad)
        return torch.stack(grads).mean(dim=0), tracking, quality

    # ----- the APGD loop at one radius ------------------------------------------------------
    def run(self, x: torch.Tensor, start: torch.Tensor, targets: Any, *, radius: float, steps: int,
            loss: str) -> tuple[torch.Tensor, torch.Tensor]:
        """APGD with ``steps`` iterations in the L∞ ball of ``radius`` around ``x`` from ``start`` (projected);
        returns (``x_best_adv``, its quality), both per image, over the start and every iterate."""
        low, high = self.pixel_range

        def project(a: torch.Tensor) -> torch.Tensor:
            return (x + (a - x).clamp(-radius, radius)).clamp(low, high)

        n = x.shape[0]
        view = (n,) + (1,) * (x.dim() - 1)
        eta = torch.full(view, 2.0 * self.step_scale(radius), dtype=x.dtype, device=x.device)
        cur = project(start)
        grad, track, quality = self.evaluate(cur, targets, loss)
        x_best_loss, grad_best, best_loss = cur.clone(), grad.clone(), track.clone()
        x_best_adv, best_quality = cur.clone(), quality.clone()
        previous, last_track = cur.clone(), track
        check_at = set(checkpoints(steps))
        rises = torch.zeros(n, device=x.device)
        last_check, halved_last, best_at_last_check = 0, torch.ones(n, dtype=torch.bool, device=x.device), best_loss
        for k in tqdm(range(steps), desc=type(self).__name__, leave=False, disable=not self.progress):
            note_step(type(self).__name__, k, steps)
            z = project(cur + eta * grad.sign())
            step = z if k == 0 else project(cur + self.momentum * (z - cur) + (1 - self.momentum) * (cur - previous))
            previous, cur = cur, step
            grad, track, quality = self.evaluate(cur, targets, loss)
            rises += (track > last_track).float()
            last_track = track
            # per-image choices by torch.where, not boolean indexing: no host sync per step on a GPU
            better = (track > best_loss).view(view)
            x_best_loss, grad_best = torch.where(better, cur, x_best_loss), torch.where(better, grad, grad_best)
            best_loss = torch.maximum(best_loss, track)
            broken = (quality <= best_quality).view(view)  # ties: the later iterate
            x_best_adv, best_quality = torch.where(broken, cur, x_best_adv), torch.minimum(best_quality, quality)
            if k + 1 in check_at:
                halve = step_to_halve(rises, k + 1 - last_check, self.rho, halved_last, best_loss, best_at_last_check)
                each = halve.view(view)
                eta = torch.where(each, eta / 2, eta)
                # restart there; the momentum and the next rise are still measured from the last iterate
                cur, grad = torch.where(each, x_best_loss, cur), torch.where(each, grad_best, grad)
                rises.zero_()
                last_check, halved_last, best_at_last_check = k + 1, halve, best_loss.clone()
        return x_best_adv, best_quality

    def optimise(self, x: torch.Tensor, adv: torch.Tensor, targets: Any) -> torch.Tensor:
        return self.run(x, adv, targets, radius=self.eps, steps=self.steps, loss=self.loss)[0]


@ATTACKS.register("sea")
class SEA(APGD):
    """SEA: for each of ``losses``, APGD over the radii 2ε, 1.5ε, ε with 30/30/40 % of ``steps`` (each stage
    restarts from the previous stage's ``x_best_adv``, projected; only the ε stage's iterates are within
    budget and compete); per image, the loss whose result has the lowest pixel accuracy wins. Dense only."""

    needs_logits = True
    #: (radius factor, share of the iterations) of each stage.
    SCHEDULE = ((2.0, 0.3), (1.5, 0.3), (1.0, 0.4))

    def __init__(self, *, steps: int = 300, losses: Sequence[str] = SEA_LOSSES,
                 class_weights: Sequence[float] | None = None, **kwargs: Any) -> None:
        if "loss" in kwargs:
            raise ValueError("SEA runs several losses: set losses=[...], not loss")
        losses = list(losses)
        unknown = [name for name in losses if name not in DENSE_LOSSES]
        if not losses or unknown:
            raise ValueError(f"losses must be a non-empty list of {', '.join(DENSE_LOSSES)}; got {losses!r}")
        super().__init__(steps=steps, loss=losses[0], **kwargs)  # each of ``losses`` is run by ``optimise``
        self.losses = losses
        self.class_weights = self._check_weights(class_weights, losses)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(eps={self.eps}, steps={self.steps}, losses={self.losses})"

    def stage_steps(self) -> list[int]:
        first = [max(1, int(share * self.steps)) for _, share in self.SCHEDULE[:-1]]
        return [*first, max(1, self.steps - sum(first))]

    def optimise(self, x: torch.Tensor, adv: torch.Tensor, targets: Any) -> torch.Tensor:
        worst, worst_quality = None, None
        for loss in self.losses:
            current = adv
            for (factor, _), steps in zip(self.SCHEDULE, self.stage_steps()):
                radius = factor * self.eps if math.isfinite(self.eps) else self.eps
                current, quality = self.run(x, current, targets, radius=radius, steps=steps, loss=loss)
            if worst is None:
                worst, worst_quality = current, quality
            else:
                take = (quality < worst_quality).view(-1, *(1,) * (current.dim() - 1))
                worst, worst_quality = torch.where(take, current, worst), torch.minimum(worst_quality, quality)
        return worst
