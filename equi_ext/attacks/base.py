"""One attack loop for every attack: budget checks, random start, step, projection.

Convention: images are float (N, 3, H, W) in ``pixel_range`` (RGB 0–255 by default) and
``eps``/``step_size`` are in pixel levels (``eps=4`` is the paper's 4/255). Attacks
maximise an objective; the fixed-step attacks change only the objective (``objective``) or how
the gradient is taken (``gradient``), never the loop; APGD replaces the loop (``optimise``).

Every attack evaluates its objective on ``views(adv)``: the iterate itself, or, when it runs through a
defense (the ``bpda`` wrapper sets ``draws``), the purified images of one or more draws of the defense,
detached, so the gradient taken there is applied to the iterate (BPDA's identity backward, averaged over
the draws: EOT).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..core.seeding import content_seeds, image_generators, uniform_like
from ..core.validation import (
    PixelRange,
    check_budget,
    check_images,
    check_pixel_range,
    check_positive_int,
)
from ..progress import note_step

LossFn = Callable[[torch.Tensor, Any], torch.Tensor]
LogitsFn = Callable[[torch.Tensor], torch.Tensor]
#: ``h(images, seed)``: the defense as a preprocessor; ``seed=None`` is its own (deployed) randomness.
Preprocessor = Callable[[torch.Tensor, int | None], torch.Tensor]
NORMS = ("linf", "l2")
#: Share of the pixel range beyond which step sizes and random starts stop growing with ε (8 of 255 levels).
STEP_SCALE_SHARE = 8 / 255


@dataclass
class DefenseDraws:
    """What the model sees of an iterate when an attack runs through a defense: the purified images of
    ``samples`` draws of the defense's randomness, detached. With ``deployed_first`` the first draw is the
    defense as deployed (``seed=None``), so an attack that keeps its best iterate judges it by exactly what
    the evaluation will see; the other draws are fresh, seeds ``c·samples + j`` at the c-th evaluation of
    an attack call (``restart`` resets c), so runs are reproducible and independent of earlier calls."""

    defense: Preprocessor
    samples: int = 1
    deployed_first: bool = False
    calls: int = 0

    def restart(self) -> None:
        self.calls = 0

    def __call__(self, adv: torch.Tensor) -> list[torch.Tensor]:
        first = self.calls * self.samples
        self.calls += 1
        seeds = [None if j == 0 and self.deployed_first else first + j for j in range(self.samples)]
        return [self.defense(adv.detach(), seed).detach() for seed in seeds]


def check_labels(targets: torch.Tensor, num_classes: int, ignore_index: int) -> None:
    """Every label a class index in [0, ``num_classes``) or ``ignore_index``; else a ``ValueError`` naming the first
    image and its offending values (torch's own error names neither)."""
    bad = (targets != ignore_index) & ((targets < 0) | (targets >= num_classes))
    if bad.any():
        i = int(bad.flatten(1).any(dim=1).nonzero()[0])
        values = targets[i][bad[i]].unique().tolist()
        raise ValueError(f"targets of image {i} hold labels {values[:5]} outside [0, {num_classes}) (the model's "
                         f"classes) that are not ignore_index {ignore_index}")


def pixel_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = 255,
                        reduction: str = "mean") -> torch.Tensor:
    """Per-pixel cross-entropy; logits are upsampled to the label size as MMSeg does."""
    check_labels(targets, logits.shape[1], ignore_index)
    return F.cross_entropy(resize_logits(logits, targets), targets.long(), ignore_index=ignore_index,
                           reduction=reduction)


def resize_logits(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Bilinearly upsample (N, C, h, w) logits to the (N, H, W) label size."""
    if logits.shape[-2:] != targets.shape[-2:]:
        return F.interpolate(logits, size=targets.shape[-2:], mode="bilinear", align_corners=False)
    return logits


def check_preprocessor(defense: Any) -> Preprocessor:
    """``defense`` if it is callable as ``h(images, seed)``, else a ``TypeError`` naming what it got."""
    if not callable(defense):
        raise TypeError(f"defense must be a callable preprocessor h(images, seed); got {type(defense).__name__}")
    return defense


def attack_kwargs(cls: type, cfg: dict, *, loss_fn: Callable | None, logits_fn: Callable | None, feature_fn: Any,
                  preprocessor: Callable | None, transforms: list | None = None, **extra: Any) -> dict:
    """Constructor arguments of attack ``cls``: the config's settings plus the model views it declares it needs."""
    kwargs = {k: v for k, v in cfg.items() if k != "type"}
    needs = cls.needs(kwargs)
    kwargs.update(loss_fn=loss_fn, logits_fn=logits_fn, **extra)
    if "features" in needs:
        kwargs["feature_fn"] = feature_fn
        if transforms is not None:
            kwargs.setdefault("transforms", transforms)
    if "defense" in needs:
        kwargs["defense"] = preprocessor
    return kwargs


class Attack:
    """Base L∞/L2 attack. Call as ``adv = attack(images, targets)``.

    Args:
        loss_fn: ``loss_fn(images, targets) -> scalar`` to maximise (the task loss). If
            omitted, per-pixel cross-entropy on ``logits_fn`` is used.
        logits_fn: ``logits_fn(images) -> (N, C, h, w)``; needed by pixel-weighting attacks.
        eps: budget in pixel levels (L∞ radius, or L2 radius with ``norm='l2'``).
        step_size: per-step size in pixel levels; default 2.5·eps/steps (Madry et al.), eps capped at 8 levels
            (``step_scale``).
        steps: number of steps.
        norm: ``'linf'`` or ``'l2'``.
        random_start: start from a uniform point in the ball instead of x.
        seed: base seed of the random start (per image, see ``image_seeds``).
        ignore_index: label ignored by the default losses.
        pixel_range: value range of the images; budgets are in these units.
        progress: show a progress bar over steps.
    """

    random_start = True
    #: What the attack needs from the model besides the task loss, so a framework can refuse it at
    #: build time: dense logits (pixel-weighting objectives), the defense's feature view (adaptive),
    #: the defense itself as a preprocessor (the BPDA family).
    needs_logits = False
    needs_features = False
    needs_defense = False
    #: Whether the attack returns the best of its iterates by its own judgement (APGD): through a defense its
    #: first draw is then the deployed one (``DefenseDraws.deployed_first``).
    selects_iterates = False
    #: Constructor arguments equi-ext supplies from the model; a config cannot set them.
    model_views: tuple[str, ...] = ("loss_fn", "logits_fn")
    #: Set by the ``bpda`` wrapper: evaluate the objective on the defense's draws instead of the iterate.
    draws: DefenseDraws | None = None

    @classmethod
    def needs(cls, settings: dict) -> set[str]:
        """What the attack configured with ``settings`` (its config, ``type`` optional) needs from the model
        besides the task loss: ``'logits'``, ``'features'``, ``'defense'``."""
        flags = (("logits", cls.needs_logits), ("features", cls.needs_features), ("defense", cls.needs_defense))
        return {name for name, needed in flags if needed}

    def __init__(self, *, loss_fn: LossFn | None = None, logits_fn: LogitsFn | None = None, eps: float = 4.0,
                 step_size: float | None = None, steps: int = 10, norm: str = "linf",
                 random_start: bool | None = None, seed: int = 0, ignore_index: int = 255,
                 pixel_range: PixelRange | None = None, progress: bool = False) -> None:
        if loss_fn is None and logits_fn is None:
            raise ValueError(f"{type(self).__name__} needs loss_fn or logits_fn")
        self.pixel_range = check_pixel_range(pixel_range)
        self.stated_pixel_range = None if pixel_range is None else self.pixel_range
        self.eps = check_budget("eps", eps, self.pixel_range)
        self.steps = check_positive_int("steps", steps)
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}; got {norm!r}")
        self.norm = norm
        if step_size is None:
            step_size = 2.5 * self.step_scale() / self.steps
        self.step_size = check_budget("step_size", step_size, self.pixel_range, allow_fraction=True)
        if not self.step_size < float("inf"):
            raise ValueError(f"step_size must be a finite number of pixel levels; got {step_size!r}")
        if random_start is not None:
            self.random_start = bool(random_start)
        self.loss_fn, self.logits_fn = loss_fn, logits_fn
        self.seed, self.ignore_index, self.progress = int(seed), int(ignore_index), progress

    def step_scale(self, radius: float | None = None) -> float:
        """The length the step rules scale with: the radius (default ε), but at most ``STEP_SCALE_SHARE`` of
        the pixel range.

        A budget only bounds where the attack may go; the distance over which the model's gradient is a
        useful guide does not grow with it. Steps and random starts proportional to a large ε jump to the
        corners of the pixel box on the first step (uniform noise, or every pixel at 0 or 255), where a
        segmenter predicts one class everywhere and the gradients of the pixels it still gets right vanish:
        on the demo DeepLabV3 PGD-20 kept 81 % of the pixels right at ε = 255 against 29 % at ε = 4. Capped,
        an attack at a large ε takes the steps of one at the cap with a looser projection."""
        radius = self.eps if radius is None else radius
        if self.norm != "linf":
            return radius
        return min(radius, STEP_SCALE_SHARE * (self.pixel_range[1] - self.pixel_range[0]))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(eps={self.eps}, step_size={self.step_size}, steps={self.steps}, norm={self.norm!r})"

    # ----- what subclasses change -------------------------------------------------
    def task_loss(self, images: torch.Tensor, targets: Any) -> torch.Tensor:
        if self.loss_fn is not None:
            return self.loss_fn(images, targets)
        return pixel_cross_entropy(self.logits_fn(images), targets, self.ignore_index)

    def objective(self, adv: torch.Tensor, targets: Any, step: int) -> torch.Tensor:
        """Scalar to maximise at step ``step``."""
        return self.task_loss(adv, targets)

    def views(self, adv: torch.Tensor) -> list[torch.Tensor]:
        """What the objective is evaluated on: ``adv``, or the defense's draws of it (``draws``)."""
        return [adv.detach()] if self.draws is None else self.draws(adv)

    def gradient(self, adv: torch.Tensor, targets: Any, step: int) -> torch.Tensor:
        """The objective's gradient at each view, averaged over the views."""
        grads = []
        for view in self.views(adv):
            view = view.requires_grad_(True)
            (grad,) = torch.autograd.grad(self.objective(view, targets, step), view)
            grads.append(grad)
        return grads[0] if len(grads) == 1 else torch.stack(grads).mean(dim=0)

    def direction(self, grad: torch.Tensor, state: dict) -> torch.Tensor:
        """Ascent direction from the gradient (sign for L∞, unit L2 for L2)."""
        if self.norm == "linf":
            return grad.sign()
        return grad / grad.flatten(1).norm(dim=1).clamp(min=1e-12).view(-1, 1, 1, 1)

    # ----- the loop ---------------------------------------------------------------
    def project(self, adv: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """Back into the ε ball around ``images`` and into the pixel range."""
        delta = adv - images
        if self.norm == "linf":
            delta = delta.clamp(-self.eps, self.eps)
        else:
            norms = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
            delta = delta * (self.eps / norms.clamp(min=1e-12)).clamp(max=1.0)
        return (images + delta).clamp(*self.pixel_range)

    def check_targets(self, images: torch.Tensor, targets: Any) -> None:
        if not isinstance(targets, torch.Tensor):
            if self.loss_fn is None:
                raise TypeError(f"targets must be a label tensor (N, H, W); got {type(targets).__name__}")
            return  # e.g. Detectron2 instances, consumed by the adapter's loss_fn
        n, _, h, w = images.shape
        if targets.dim() != 3 or targets.shape[0] != n or (self.loss_fn is None and tuple(targets.shape[1:]) != (h, w)):
            raise ValueError(f"targets must have shape (N, H, W) = ({n}, {h}, {w}); got {tuple(targets.shape)}")
        if targets.is_floating_point():
            raise TypeError(f"targets must be an integer label map; got dtype {targets.dtype}")

    def __call__(self, images: torch.Tensor, targets: Any, *, image_seeds: Sequence[int] | None = None) -> torch.Tensor:
        """Return adversarial images within ``eps`` of ``images`` and inside the pixel range."""
        check_images(images, self.stated_pixel_range)
        self.check_targets(images, targets)
        if torch.is_inference_mode_enabled():
            raise RuntimeError("attacks need input gradients; they cannot run inside torch.inference_mode()")
        x = images.detach()
        if self.eps == 0:
            return x.clone()
        if self.draws is not None:
            self.draws.restart()
        with torch.enable_grad():
            return self.optimise(x, self.start_point(x, image_seeds), targets).detach()

    def start_point(self, x: torch.Tensor, image_seeds: Sequence[int] | None) -> torch.Tensor:
        """x, or with ``random_start`` a uniform point of the ε ball drawn from each image's own stream."""
        if not self.random_start:
            return x.clone()
        radius = self.step_scale()
        gens = image_generators(self.seed, content_seeds(x, image_seeds), x.shape[0])
        return self.project(x + uniform_like(x, gens, -radius, radius), x)

    def optimise(self, x: torch.Tensor, adv: torch.Tensor, targets: Any) -> torch.Tensor:
        """The fixed-step loop: ``steps`` ascent steps of ``step_size`` from ``adv``, projected each time."""
        state: dict = {}
        for step in tqdm(range(self.steps), desc=type(self).__name__, leave=False, disable=not self.progress):
            note_step(type(self).__name__, step, self.steps)
            grad = self.gradient(adv, targets, step)
            adv = self.project(adv.detach() + self.step_size * self.direction(grad, state), x)
        return adv
