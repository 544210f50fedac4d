"""Ablations of the equivariance defense on the demo model (paper Tables 6, 7, 12 and Figure 3).

Each ablation evaluates, with MMSeg's test loop and ``IoUMetric`` on the first N images of a val split,
the defense at every point of one grid, clean and under PGD at ε = ``EPS``, plus the vanilla model once
for reference. Every point starts from a preset's settings and changes only the ablated knob, so a
difference between points is the knob's effect and nothing else:

  transforms   (Table 6)  subsets of the paper's K = 8 set, every transform used at every step
  eps_v        (Table 7)  ε_v, with the step size scaled to keep the preset's η / ε_v ratio
  optimizer    (Table 12) SGLD (annealed noise) vs plain SGD (no noise)
  constraints  (Figure 3) the first K transforms of the paper's set in a fixed order, all K per step

Grids are plain data (``ABLATIONS``, ``build_grid``) so they can be checked without running a model;
``run_ablation`` runs one grid and writes ``ablation_<name>.{md,json,csv,png}``, reporting also how far
the defense moved the images (max and mean |x' − x|, pixel levels; x is the defense's input).
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, NamedTuple

from mmengine.hooks import Hook

from ..core.defense import OPTIMIZERS, PRESETS
from ..core.transforms import (
    TRANSFORM_SETS,
    TRANSFORMS,
    ColorJitter,
    HFlip,
    Resize,
    Rotate,
    Transform,
)
from ..core.validation import SettingsError
from ..defenses import build_defense
from ..mmseg.evaluation import evaluate_grid
from ..mmseg.segmentor import runtime
from ..pipeline import active_run
from ..reporting import Report
from .demo import DATA, EPS, build_demo_runner, ensure_data

logger = logging.getLogger(__name__)


def transform_spec(t: Transform) -> dict:
    """A transform as a config dict (``dict(type='resize', scale=[0.3, 0.5])``), so that grid points
    stay plain data in the MMSeg ``test_cfg`` and in the JSON report."""
    name = next(n for n in TRANSFORMS.names() if TRANSFORMS.get(n) is type(t))
    return dict(type=name, **{k: list(v) if isinstance(v, tuple) else v for k, v in asdict(t).items()})


PAPER_SET = TRANSFORM_SETS["paper"]
#: Table 6: families of the paper's K = 8 set, so "all" is exactly the paper's set.
TRANSFORM_SUBSETS = {
    name: [transform_spec(t) for t in PAPER_SET if isinstance(t, families)]
    for name, families in {"resize": Resize, "flip": HFlip, "rotate": Rotate, "color_jitter": ColorJitter,
                           "flip+resize": (HFlip, Resize), "paper": Transform}.items()
}
#: Figure 3: the paper's set reordered so that every prefix mixes families, most useful first
#: (Table 6: flip and resize help most): flip, resize 0.5–0.8×, resize 1.25–1.6×, rotate −15…−5°,
#: resize 0.3–0.5×, resize 1.6–2×, colour jitter, rotate 5…15°.
CONSTRAINT_POOL = [transform_spec(PAPER_SET[i]) for i in (5, 1, 2, 6, 0, 3, 4, 7)]


def _all_per_step(transforms: list[dict]) -> dict:
    """Constrain every step with the whole set: a preset that uses one transform per step
    (``fast``) would otherwise cap the distinct constraints of a call at T."""
    return dict(transforms=transforms, transforms_per_step=len(transforms))


def _choice(valid: Any) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value not in valid:
            raise SettingsError(f"must be one of {', '.join(valid)}; got {value!r}")
        return value
    return parse


def _finite(value: str) -> float:
    number = float(value)  # its ValueError names the value
    if not math.isfinite(number):
        raise SettingsError(f"must be a finite number; got {value!r}")
    return number


def _k(value: str) -> int:
    k = int(value)
    if not 1 <= k <= len(CONSTRAINT_POOL):
        raise SettingsError(f"must be an integer in [1, {len(CONSTRAINT_POOL)}] (the pool's size); got {value!r}")
    return k


class Ablation(NamedTuple):
    """One ablation: its grid as data. A grid value ``v`` becomes the point ``label(v)`` with the
    defense overrides ``overrides(v, base)``, ``base`` being the preset's settings."""

    reference: str
    knob: str
    values: tuple
    parse: Callable[[str], Any]
    label: Callable[[Any], str]
    overrides: Callable[[Any, dict], dict]
    plot: str  # 'bar' (categorical knob) or 'line' (numeric knob, log2 axis)
    note: str


ABLATIONS = {
    "transforms": Ablation(
        "Table 6", "transform set", tuple(TRANSFORM_SUBSETS), _choice(TRANSFORM_SUBSETS),
        str, lambda v, base: _all_per_step(TRANSFORM_SUBSETS[v]), "bar",
        "Subsets of the paper's K = 8 transforms (random parameters drawn per call from the seed); "
        "every transform of a set is used at every step."),
    "eps_v": Ablation(
        "Table 7", "ε_v (pixel levels)", (1.0, 2.0, 4.0, 8.0, 16.0), _finite,
        "ε_v={:g}".format, lambda v, base: dict(eps_v=v, step_size=v * base["step_size"] / base["eps_v"]), "line",
        "Step size η scaled with ε_v to keep the preset's ratio η / ε_v."),
    "optimizer": Ablation(
        "Table 12", "optimizer", OPTIMIZERS, _choice(OPTIMIZERS),
        str.upper, lambda v, base: dict(optimizer=v), "bar",
        "SGLD adds annealed Gaussian noise (σ_t = (T−1−t)/T) inside the sign step; SGD does not."),
    "constraints": Ablation(
        "Figure 3", "K (number of transforms)", (1, 2, 4, 8), _k,
        "K={}".format, lambda v, base: _all_per_step(CONSTRAINT_POOL[:v]), "line",
        "The first K of a fixed pool (the paper's set in the order flip, resize 0.5–0.8×, resize 1.25–1.6×, "
        "rotate −15…−5°, resize 0.3–0.5×, resize 1.6–2×, colour jitter, rotate 5…15°); all K used at every step."),
}


def build_grid(name: str, values: list[Any] | None = None, preset: str = "fast") -> list[tuple[str, Any, dict]]:
    """``[(label, value, defense overrides), ...]`` of ablation ``name`` at ``values`` (strings are
    parsed; default: the ablation's own grid). Raises ValueError naming the ablation and the bad value."""
    if name not in ABLATIONS:
        raise SettingsError(f"unknown ablation {name!r}; valid names: {', '.join(ABLATIONS)}")
    if preset not in PRESETS:
        raise SettingsError(f"unknown preset {preset!r}; valid names: {', '.join(PRESETS)}")
    spec = ABLATIONS[name]
    parsed = []
    for value in spec.values if values is None else values:
        try:
            parsed.append(spec.parse(value) if isinstance(value, str) else value)
        except ValueError as err:
            raise SettingsError(f"{name} value {value!r}: {err}") from None
    if not parsed:
        raise SettingsError(f"{name}: the grid must have at least one value")
    grid = [(spec.label(v), v, spec.overrides(v, PRESETS[preset])) for v in parsed]
    labels = [label for label, _, _ in grid]
    if len(set(labels)) != len(labels):
        raise SettingsError(f"{name}: duplicate grid values {parsed}")
    return grid


def defense_cfg(overrides: dict, preset: str, seed: int) -> dict:
    """The equivariance defense of one grid point: the preset, the seed and the point's overrides."""
    return dict(type="equi", preset=preset, seed=seed, **overrides)


class ShiftRecorder:
    """Wraps a defense to record, per image, max and mean |x' − x| of each call (x = its input)."""

    def __init__(self, defense: Any, shifts: list[tuple[float, float]]) -> None:
        self.defense, self.shifts = defense, shifts

    def __getattr__(self, name: str) -> Any:
        return getattr(self.defense, name)

    def __call__(self, images, features, **kwargs):
        out = self.defense(images, features, **kwargs)
        delta = (out.images - images.detach()).abs().flatten(1)
        self.shifts.extend(zip(delta.amax(1).tolist(), delta.mean(1).tolist()))
        return out


class ShiftHook(Hook):
    """Before each test run, wrap the defense of the cell's run (``evaluate_grid`` builds one per cell) in a
    ``ShiftRecorder``:
    ``evaluate_grid`` reports mIoU and scores but not the purified images. ``runs[i]`` holds the
    shifts of the i-th run, i.e. of ``evaluate_grid``'s i-th row (empty without a defense)."""

    def __init__(self) -> None:
        self.runs: list[list[tuple[float, float]]] = []

    def before_test(self, runner) -> None:
        self.runs.append([])
        pipeline = active_run(runner.model).pipeline or runtime(runner.model).pipeline
        if pipeline.defends:
            pipeline.defense = ShiftRecorder(pipeline.defense, self.runs[-1])


COLUMNS = [  # (header, key in a result row, format); a row holds both scenarios of one grid point
    ("clean mIoU", "clean_mIoU", "{:.2f}"), ("PGD mIoU", "attacked_mIoU", "{:.2f}"),
    ("score clean", "clean_score", "{:.3f}"), ("score PGD", "attacked_score", "{:.3f}"),
    ("max abs shift clean", "clean_shift_max", "{:.2f}"), ("max abs shift PGD", "attacked_shift_max", "{:.2f}"),
    ("mean abs shift clean", "clean_shift_mean", "{:.3f}"), ("mean abs shift PGD", "attacked_shift_mean", "{:.3f}"),
    ("seconds", "seconds", "{:.0f}"),
]


def collect(grid_rows: list[dict], runs: list[list[tuple[float, float]]], attack: str) -> dict[str, dict]:
    """Merge ``evaluate_grid`` rows (one per scenario) into one result per defense label."""
    results: dict[str, dict] = {}
    for row, shifts in zip(grid_rows, runs, strict=True):
        scenario = "attacked" if row["attack"] == attack else "clean"
        result = results.setdefault(row["defense"], dict(label=row["defense"], seconds=0.0))
        result.update({f"{scenario}_mIoU": row["mIoU"], f"{scenario}_score": row["score"]})
        if shifts:
            result[f"{scenario}_shift_max"] = max(s for s, _ in shifts)
            result[f"{scenario}_shift_mean"] = sum(m for _, m in shifts) / len(shifts)
        result["seconds"] += row["seconds"]
    return results


def table(results: list[dict], knob: str) -> str:
    lines = [f"| {knob} | " + " | ".join(h for h, _, _ in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for r in results:
        lines.append(f"| {r['label']} | " + " | ".join(fmt.format(r[k]) if k in r else "—" for _, k, fmt in COLUMNS)
                     + " |")
    return "\n".join(lines)


def render(data: dict) -> str:
    """The page of an ablation result: its settings and one row per grid point, vanilla first."""
    return (f"# {data['ablation']} ablation ({data['reference']} of the paper)\n\n"
            f"Demo DeepLabV3, first {data['num_images']} val images of {data['data_root']}, mIoU (%) by "
            f"MMSeg's IoUMetric; attack {data['attack']} at ε = {data['eps']:g} on the vanilla model's loss (seed "
            f"{data['seed']}). Defense: preset `{data['preset']}` {data['base']}, seed {data['seed']}; only "
            f"{data['knob']} changes. {data['note']} Shifts are |x' − x| in pixel levels, x being the defense's input (max "
            "over pixels and images; mean over pixels and images).\n\n"
            + table([data["vanilla"], *data["points"]], data["knob"]) + f"\n\n![{data['ablation']}]"
            f"(ablation_{data['ablation']}.png)\n")


def plot(data: dict) -> bytes:
    """PNG of defended clean and attacked mIoU per grid point, vanilla as horizontal lines."""
    from matplotlib.figure import Figure  # object API, Agg canvas: no pyplot state, no display

    name, points, vanilla, attack = data["ablation"], data["points"], data["vanilla"], data["attack"]
    fig = Figure(figsize=(5.5, 4.2))
    ax = fig.add_subplot()
    clean, attacked = [p["clean_mIoU"] for p in points], [p["attacked_mIoU"] for p in points]
    if data["plot"] == "bar":
        x = range(len(points))
        ax.bar([i - 0.2 for i in x], clean, 0.4, label="clean + defense")
        ax.bar([i + 0.2 for i in x], attacked, 0.4, label=f"{attack} + defense")
        ax.set_xticks(list(x), [p["label"] for p in points])
    else:
        x = [p["value"] for p in points]
        ax.plot(x, clean, "o-", label="clean + defense")
        ax.plot(x, attacked, "s-", label=f"{attack} + defense")
        ax.set_xscale("log", base=2)
        ax.set_xticks(x, [f"{v:g}" for v in x])
    ax.axhline(vanilla["clean_mIoU"], color="gray", ls="--", lw=1, label="vanilla clean")
    ax.axhline(vanilla["attacked_mIoU"], color="gray", ls=":", lw=1, label=f"vanilla {attack}")
    ax.set_xlabel(data["knob"])
    ax.set_ylabel("mIoU (%)")
    ax.set_title(f"{name} ablation ({data['reference']} of the paper)")
    ax.legend(fontsize=7, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.2))  # below: clear of the data
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    return buffer.getvalue()


REPORT = Report(render, {"ablation_{data[ablation]}.png": plot})  # the page links it by the ablation's name


def run_ablation(*, ablation: str, values: list[Any] | None = None, num_images: int = 8, preset: str = "fast",
                 attack_steps: int = 20, seed: int = 0, data_root: str | Path = DATA, work_dir: str | Path,
                 command: str | None = None) -> dict:
    """Evaluate the vanilla model and every point of ablation ``ablation`` (at ``values``, strings parsed;
    default: the ablation's own grid) clean and under PGD-``attack_steps``, with ``seed`` for both the
    defense and the attack; write ``work_dir/ablation_<name>.{md,json,csv,png}`` and return the JSON's
    content. ``command`` (the command line that asked for it) is quoted on the page.

    Raises:
        ValueError: ``num_images`` or ``attack_steps`` < 1, an unknown ablation or preset, a bad grid
            value or a point the defense refuses — all before anything is evaluated or written.
    """
    if num_images < 1 or attack_steps < 1:
        raise SettingsError(f"num_images and attack_steps must be >= 1; got {num_images}, {attack_steps}")
    grid = build_grid(ablation, values, preset)
    for label, _, overrides in grid:  # fail before any evaluation, with the library's own checks
        try:
            build_defense(defense_cfg(overrides, preset, seed))
        except (TypeError, ValueError) as err:
            raise SettingsError(f"{ablation} point {label!r}: {err}") from None
    spec = ABLATIONS[ablation]
    out = Path(work_dir)
    if Path(data_root) == DATA:
        ensure_data()
    logger.info("%s ablation: vanilla and %d grid points, clean and under PGD-%d, on %d images", ablation, len(grid),
                attack_steps, num_images)
    runner = build_demo_runner(Path(data_root), num_images, out / "runs")
    hook = ShiftHook()
    runner.register_hook(hook)
    attack = f"PGD-{attack_steps}"
    defenses = {"vanilla": None, **{label: defense_cfg(o, preset, seed) for label, _, o in grid}}
    rows = evaluate_grid(runner, defenses, {"clean": None, attack: dict(type="pgd", eps=EPS, steps=attack_steps,
                                                                         seed=seed)})
    results = collect(rows, hook.runs, attack)
    vanilla = dict(results.pop("vanilla"), label="vanilla (no defense)")
    points = [dict(results[label], value=value, overrides=o) for label, value, o in grid]
    data = dict(ablation=ablation, reference=spec.reference, knob=spec.knob, note=spec.note, plot=spec.plot,
                num_images=num_images,
                data_root="the demo benchmark" if Path(data_root) == DATA else str(data_root),
                preset=preset, base=PRESETS[preset], eps=EPS, attack=attack, seed=seed,
                vanilla=vanilla, points=points)
    csv_rows = [{"label": p["label"], "value": p["value"], **{k: p.get(k) for _, k, _ in COLUMNS}} for p in points]
    REPORT.write(out, f"ablation_{ablation}", data, csv_rows, command)
    return data
