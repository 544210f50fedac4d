"""What both framework adapters do with a batch in RGB pixel space: attack, defend, score.

The adapters (``equi_ext.mmseg``, ``equi_ext.detectron2``) only convert their inputs to
pixels, supply the model's views (features, logits, task loss) and hand the result back
to their stock inference; every decision about attacks, defenses and scores is made here.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import weakref
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .attacks import ATTACKS, defense_preprocessor
from .attacks.base import attack_kwargs
from .core.defense import DefenseOutput, EquivarianceDefense, frozen_model
from .core.scores import output_variance_score
from .core.validation import SettingsError
from .defenses import DEFENSES

#: scenario name → (attack?, defend?); the tools run one evaluation each.
SCENARIOS = {
    "clean": (False, False),
    "clean_defended": (False, True),
    "attacked": (True, False),
    "defended": (True, True),
}

def check_scenarios(names: Sequence[str], unset: dict[str, str] | None = None) -> list[str]:
    """``names`` as a list, or a ``SettingsError`` (a ``ValueError``) naming the unknown ones and the valid ones.

    ``unset`` maps ``'attack'`` / ``'defense'`` to the settings key the config leaves unset (e.g.
    ``{'attack': 'model.test_cfg.attack'}``): a scenario that needs it is refused, since it would run as
    clean under its own label."""
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown:
        raise SettingsError(f"unknown scenario(s) {', '.join(map(repr, unknown))}; valid: {', '.join(SCENARIOS)}")
    for name in names:
        for part, needed in zip(("attack", "defense"), SCENARIOS[name]):
            if needed and part in (unset or {}):
                raise SettingsError(f"scenario {name!r} needs {unset[part]}, which the config does not set")
    return list(names)


#: The key of an image's recorded score on its prediction (MMSeg: data-sample metainfo; Detectron2: output dict).
SCORE_KEY = "equi_score"

SCENARIO_LABELS = {"clean": "clean", "clean_defended": "clean + defense", "attacked": "attacked",
                   "defended": "attacked + defense"}


def scenario_of(attack: bool, defend: bool) -> str:
    """The scenario of ``SCENARIOS`` that attacks and/or defends."""
    return next(name for name, flags in SCENARIOS.items() if flags == (bool(attack), bool(defend)))


def scenario_table(rows: list[dict], metrics: dict[str, str]) -> str:
    """Markdown table, one row per scenario: the ``metrics`` columns (header → key, shown ×1 with two
    decimals), then the mean equivariance score, the number of images and the seconds taken."""
    header = ["scenario", *metrics, "equivariance score", "images", "seconds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        score = f"{r['equivariance_score']:.3f}" if r.get("equivariance_score") is not None else "—"
        cells = [SCENARIO_LABELS[r["scenario"]], *(f"{r[key]:.2f}" for key in metrics.values()), score,
                 str(r["images"]), f"{r['seconds']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class EquiRun:
    """What one evaluation asks of a model's inference, as a value: the adapters read the run active on their model
    (:func:`active_run`) at each batch, so nothing about an evaluation is stored on the model.

    Args:
        scenario: one of ``SCENARIOS``; None: attack and defend as configured.
        pipeline: the defense and attack to apply; None: the model's configured ones.
        record_scores: put each image's score on its output (``SCORE_KEY``).
        record_losses: put each image's task loss on its output (Detectron2: ``task_loss``).
        views: the adapter's view settings for the run (MMSeg: ``feature_layer``, ``reuse_backbone``;
            Detectron2: ``levels``); an adapter refuses keys it does not know.
        sink: called with the ``DefenseOutput`` of each group of images the run defends (e.g. to count what
            detect-then-defend flagged).
    """

    scenario: str | None = None
    pipeline: EquiPipeline | None = None
    record_scores: bool = False
    record_losses: bool = False
    views: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    sink: Callable[[Any], None] | None = None

    def __post_init__(self) -> None:
        if self.scenario is not None:
            check_scenarios([self.scenario])

    def view(self, key: str, default: Any, known: Sequence[str]) -> Any:
        """The run's ``views[key]`` (``default`` when unset); a view key outside ``known`` is a ``KeyError``."""
        unknown = [k for k in self.views if k not in known]
        if unknown:
            raise KeyError(f"view setting(s) {', '.join(map(repr, unknown))} are not known to this model; "
                           f"known: {', '.join(known)}")
        return self.views.get(key, default)


#: The run of a model that no evaluation has activated: everything as configured, nothing recorded.
CONFIGURED_RUN = EquiRun()
_ACTIVE_RUNS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def unwrapped(model: nn.Module) -> nn.Module:
    """The model inside a (Distributed)DataParallel wrapper, else ``model``."""
    return getattr(model, "module", model)


@contextlib.contextmanager
def running(model: nn.Module, run: EquiRun) -> Iterator[EquiRun]:
    """Make ``run`` the active run of ``model`` for the block; the previous one comes back after it, also when it
    raises. A run inside another's block keeps the enclosing run's ``views`` that it does not set itself; blocks
    nest like ``with`` statements, one thread per model.

    Raises:
        TypeError: ``model`` is a ``torch.nn.DataParallel``, whose forward runs copies of the model that no run
            reaches (``DistributedDataParallel`` runs the model itself and is fine).
    """
    if isinstance(model, nn.DataParallel):
        raise TypeError("equi-ext runs need the model itself: torch.nn.DataParallel replicates it at every forward "
                        "and the copies would run as configured; use DistributedDataParallel or one device")
    model = unwrapped(model)
    saved = _ACTIVE_RUNS.get(model)
    if saved is not None and saved.views:
        run = dataclasses.replace(run, views={**saved.views, **run.views})
    _ACTIVE_RUNS[model] = run
    try:
        yield run
    finally:
        if saved is None:
            _ACTIVE_RUNS.pop(model, None)
        else:
            _ACTIVE_RUNS[model] = saved


def active_run(model: nn.Module) -> EquiRun:
    """The run active on ``model`` (:func:`running`), or ``CONFIGURED_RUN``."""
    return _ACTIVE_RUNS.get(unwrapped(model), CONFIGURED_RUN)


def as_cfg(value: Any) -> dict | None:
    """``None`` / ``'name'`` / a mapping → ``None`` / ``{'type': 'name'}`` / a dict copy."""
    if value is None:
        return None
    if isinstance(value, str):
        return {"type": value}
    return dict(value)


def default_scenarios(has_defense: bool, has_attack: bool) -> list[str]:
    """Every scenario the configured defense/attack make meaningful, in table order."""
    scenarios = ["clean"]
    if has_defense:
        scenarios.append("clean_defended")
    if has_attack:
        scenarios.append("attacked")
        if has_defense:
            scenarios.append("defended")
    return scenarios


class PixelBatch(abc.ABC):
    """One batch of a framework's inputs as :meth:`EquiPipeline.process` sees it: the adapter's views.

    Images are addressed by their index in the batch; ``idx`` is a list of indices of one group
    (images that share a ``group_key``, so their pixels stack into one (n, 3, H, W) tensor).
    """

    def __init__(self, model: nn.Module, size: int) -> None:
        self.model, self.size = model, size

    @abc.abstractmethod
    def group_key(self, i: int) -> Hashable:
        """Images with equal keys are attacked and defended together."""

    @abc.abstractmethod
    def pixels(self, idx: list[int]) -> torch.Tensor:
        """The group's images as RGB pixels in the pipeline's range, (n, 3, H, W)."""

    @abc.abstractmethod
    def seed(self, i: int) -> int:
        """Image ``i``'s seed: the same image gets the same attack and defense in any batch."""

    @abc.abstractmethod
    def targets(self, idx: list[int]) -> Any:
        """Ground truth the attack's task loss takes (asked for only when attacking)."""

    @abc.abstractmethod
    def loss_fn(self, idx: list[int]) -> Callable:
        """``loss_fn(pixels, targets)``: the task loss the attack maximises."""

    def logits_fn(self, idx: list[int]) -> Callable | None:
        """``logits_fn(pixels)``: dense logits, for attacks and scores that weight pixels (None: none)."""
        return None

    @abc.abstractmethod
    def view(self, idx: list[int], pixels: torch.Tensor) -> Any:
        """The defense's model view of ``pixels`` (a feature function or an ``Objective``)."""

    @property
    def attack_extra(self) -> dict:
        """Further attack arguments of the framework (e.g. its ``ignore_index``)."""
        return {}

    def groups(self) -> list[list[int]]:
        """The batch's indices grouped by ``group_key``, in order of first appearance."""
        groups: dict[Hashable, list[int]] = defaultdict(list)
        for i in range(self.size):
            groups[self.group_key(i)].append(i)
        return list(groups.values())

    @abc.abstractmethod
    def put(self, idx: list[int], pixels: torch.Tensor, changed: bool) -> None:
        """Hand the group's final pixels back to the framework (``changed``: attacked or defended)."""


class EquiPipeline:
    """A configured defense and attack, applied to pixel batches.

    Args:
        defense_cfg: a defense name or config dict (``None`` = no defense).
        attack_cfg: an attack name or config dict (``None`` = no attack).
        pixel_range: value range of the pixel batches.
        needs_logits: attacks that weight pixels need dense logits; a framework without
            them (Detectron2) passes False so such attacks are refused at build time.
        score: what ``record_score`` records per image: ``'equivariance'`` (default: the
            defense's own score, see below), ``'invariance'``, ``'output_variance'`` (paper
            Eq. 16 on the logits; higher = more suspicious), or a defense name/config whose
            ``score`` is used (e.g. ``dict(type='rotation', head=...)``: its self-supervised loss).

    Raises:
        KeyError / ValueError / TypeError: unknown names or bad budgets, at construction
        (the attack is built once with stand-ins), never mid-evaluation.
    """

    def __init__(self, defense_cfg: Any = None, attack_cfg: Any = None, *, pixel_range=(0.0, 255.0),
                 needs_logits: bool = True, score: Any = "equivariance") -> None:
        defense_cfg, self.attack_cfg = as_cfg(defense_cfg), as_cfg(attack_cfg)
        self.pixel_range = pixel_range
        if defense_cfg is not None:
            defense_cfg.setdefault("pixel_range", pixel_range)
        self.defense = DEFENSES.build(defense_cfg) if defense_cfg is not None else None
        #: whether a defended scenario changes the images (False without a defense, or with ``none``)
        self.defends = self.defense is not None and self.defense.defends
        if self.attack_cfg is not None:
            name = self.attack_cfg.get("type")
            cls = ATTACKS.check_keys(name, [k for k in self.attack_cfg if k != "type"])
            if "logits" in cls.needs(self.attack_cfg) and not needs_logits:
                usable = [n for n in ATTACKS.names() if "logits" not in ATTACKS.get(n).needs({})]
                raise ValueError(f"attack {name!r} ({cls.__name__}) needs dense logits to weight pixels, which this "
                                 f"model does not have; use one of {', '.join(usable)}")
            # Built once with stand-in views so a bad budget fails here, not mid-evaluation.
            cls(**attack_kwargs(cls, self.attack_cfg, loss_fn=lambda x, t: x.sum(),
                                logits_fn=(lambda x: x) if needs_logits else None,
                                feature_fn=lambda x: x, preprocessor=lambda x, seed: x, pixel_range=pixel_range))
        # The equivariance score uses the transforms of the defense's own equivariance scorer (the equi defense
        # itself; the detector of detect-then-defend, so the adaptive attacker targets what the detector sees),
        # else the default set. A defense with a scorer computes the score while defending (``defense_scores``).
        own_scorer = self.defense.equivariance_scorer if self.defense is not None else None
        self.score_defense = own_scorer or EquivarianceDefense(pixel_range=pixel_range)
        self.defense_scores = score == "equivariance" and own_scorer is not None
        self.scorer = self._build_scorer(score, pixel_range, needs_logits)

    def _build_scorer(self, score: Any, pixel_range, needs_logits: bool) -> Callable:
        """(pixels, features, logits_fn) → (N,) per-image score; ``'invariance'`` and any other
        defense name reach the registry (the defense's own ``score``)."""
        if score == "equivariance":
            return lambda pixels, features, logits_fn: self.score_defense.score(pixels, features)
        if score == "output_variance":
            if not needs_logits:
                raise ValueError("score='output_variance' needs dense logits, which this model does not have")
            return lambda pixels, features, logits_fn: output_variance_score(
                logits_fn, pixels, transforms=self.score_defense.transforms, pixel_range=pixel_range)
        cfg = as_cfg(score) if isinstance(score, (str, dict)) else None
        if cfg is None or not isinstance(cfg.get("type"), str):
            raise ValueError(f"score must be 'equivariance', 'invariance', 'output_variance' or a defense "
                             f"name/config; got {score!r}")
        cfg.setdefault("pixel_range", pixel_range)
        scorer = DEFENSES.build(cfg)
        if scorer.score is None:
            raise ValueError(f"score={score!r}: defense {type(scorer).__name__} has no score")
        return lambda pixels, features, logits_fn: scorer.score(pixels, features)

    def active(self, scenario: str | None) -> tuple[bool, bool]:
        """(attack?, defend?) of ``scenario`` (None: as configured) given what is configured."""
        attack, defend = SCENARIOS[scenario] if scenario else (True, True)
        return attack and self.attack_cfg is not None, defend and self.defends

    def scenarios(self, names: Sequence[str] | None, keys: dict[str, str]) -> list[str]:
        """``names`` checked against what is configured (``check_scenarios``), or with None every scenario the
        configured defense/attack make meaningful; ``keys`` names the 'defense' and 'attack' settings keys."""
        configured = {"defense": self.defends, "attack": self.attack_cfg is not None}
        if names is None:
            return default_scenarios(configured["defense"], configured["attack"])
        return check_scenarios(names, {part: keys[part] for part, is_set in configured.items() if not is_set})

    def process(self, batch: PixelBatch, scenario: str | None, record_scores: bool = False,
                sink: Callable[[DefenseOutput], None] | None = None) -> list[float | None]:
        """The per-batch flow of both adapters: group, attack, defend, hand back; each step leaves the model
        as it found it (:meth:`run`).

        The attack sees the defense's view of the clean image; the defense (and the score) the view
        of what it is given; ``sink`` receives each group's ``DefenseOutput``. Returns each image's score (None
        unless ``record_scores``).
        """
        attack_on, defend_on = self.active(scenario)
        scores: list[float | None] = [None] * batch.size
        for idx in batch.groups():
            pixels, seeds, logits_fn = batch.pixels(idx), [batch.seed(i) for i in idx], batch.logits_fn(idx)
            if attack_on:
                pixels, _ = self.run(pixels, attack=True, defend=False, features=batch.view(idx, pixels),
                                     model=batch.model, seeds=seeds, targets=batch.targets(idx),
                                     loss_fn=batch.loss_fn(idx), logits_fn=logits_fn, **batch.attack_extra)
            score = None
            if defend_on or record_scores:
                pixels, score = self.run(pixels, attack=False, defend=defend_on, features=batch.view(idx, pixels),
                                         model=batch.model, seeds=seeds, logits_fn=logits_fn,
                                         record_score=record_scores, sink=sink)
            batch.put(idx, pixels, changed=attack_on or defend_on)
            if score is not None:
                for i, value in zip(idx, score.tolist()):
                    scores[i] = value
        return scores

    def run(self, pixels: torch.Tensor, *, attack: bool, defend: bool, features: Any, model: nn.Module,
            seeds: Sequence[int], targets: Any = None, loss_fn: Callable | None = None,
            logits_fn: Callable | None = None, record_score: bool = False,
            sink: Callable[[DefenseOutput], None] | None = None,
            **attack_extra: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One group's step: attack (if ``attack`` and configured), then defend (if ``defend`` and configured),
        with ``model`` left as found (``frozen_model``: the attack's forwards would otherwise update the
        statistics of a model left in training mode).

        ``features`` is the defense's model view (a feature_fn or an ``Objective``);
        ``loss_fn(pixels, targets)`` the task loss the attack maximises. Returns the
        pixels to predict on and, with ``record_score``, their (N,) equivariance scores.
        """
        with frozen_model(model):
            if attack and self.attack_cfg is not None:
                pixels = self.attack(pixels, targets, features=features, model=model, seeds=seeds,
                                     loss_fn=loss_fn, logits_fn=logits_fn, **attack_extra)
            score = None
            if defend and self.defends:
                out = self.defense(pixels, features, model=model, image_seeds=seeds,
                                   compute_score=record_score and self.defense_scores)
                pixels, score = out.images, out.score
                if sink is not None:
                    sink(out)
            if record_score and score is None:
                score = self.scorer(pixels, features, logits_fn)
        return pixels, score

    def attack(self, pixels: torch.Tensor, targets: Any, *, features: Any, model: nn.Module, seeds: Sequence[int],
               loss_fn: Callable, logits_fn: Callable | None, **extra: Any) -> torch.Tensor:
        cls = ATTACKS.get(self.attack_cfg["type"])
        if self.defends:
            preprocessor = defense_preprocessor(self.defense, features, model=model, image_seeds=seeds,
                                                differentiable=getattr(cls, "differentiable_defense", False))
        else:
            def preprocessor(x: torch.Tensor, seed: int) -> torch.Tensor:  # BPDA on no defense = PGD
                return x.clone()
        # The adaptive attacker is white-box: it uses the transforms of the defense it faces.
        attack = cls(**attack_kwargs(cls, self.attack_cfg, loss_fn=loss_fn, logits_fn=logits_fn,
                                     feature_fn=features, preprocessor=preprocessor,
                                     transforms=self.score_defense.transforms, pixel_range=self.pixel_range,
                                     **extra))
        return attack(pixels, targets, image_seeds=seeds)
