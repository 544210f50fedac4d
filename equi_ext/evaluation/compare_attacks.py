"""Is SEA the strongest attack on an undefended DeepLabV3? SEA against PGD, SegPGD and CosPGD at equal cost.

SEA with ``steps`` APGD iterations per loss spends 3·``steps`` forward/backward passes; each fixed-step
baseline gets the same 3·``steps`` iterations and its best fixed step size, chosen on the *tuning* split
(seed 1) from ``STEP_CANDIDATES`` (the 2.5ε/steps default shrinks as iterations grow, which would handicap
it), then all are measured on the reported split with the steps the tuning run chose (its JSON). SEA is also
run one loss at a time, and the greedy search for the lowest dataset mIoU over those three outputs per image
(how SEA's authors report mIoU) stands beside its merged run; its margin counts the lower of the two.
Measured: ``docs/benchmarks/compare_attacks.md``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..attacks.apgd import SEA_LOSSES
from ..cells import Cell
from ..core.validation import SettingsError
from ..reporting import Report
from .backends import MMSegBackend
from .demo import CONFIG, EPS, ensure_data, ensure_tune_data

BASELINES = ("pgd", "segpgd", "cospgd")
#: Fixed step sizes tried on the tuning split, as fractions of ε (at ε = 4: 0.25, 0.5, 1 and 2 pixel levels).
STEP_FRACTIONS = (1 / 16, 1 / 8, 1 / 4, 1 / 2)


def sea(steps: int, eps: float = EPS, class_weights: list[float] | None = None) -> dict:
    weights = {} if class_weights is None else {"class_weights": class_weights}
    return dict(type="sea", eps=eps, steps=steps, **weights)


def sea_per_loss(steps: int, eps: float = EPS, class_weights: list[float] | None = None) -> dict[str, dict]:
    """SEA one loss at a time, as its authors report mIoU (the same start each, so each is one branch of the
    merged run): loss name → attack settings."""
    return {loss: dict(sea(steps, eps, class_weights if loss == "balanced_ce" else None), losses=[loss])
            for loss in SEA_LOSSES}


def training_class_weights() -> list[float]:
    """SEA's ``balanced_ce`` weights as its authors set them: inverse pixel frequencies of the training split."""
    from mmengine.config import Config

    from ..mmseg.class_weights import inverse_pixel_frequencies

    return inverse_pixel_frequencies(Config.fromfile(CONFIG), data_root=str(ensure_data()))["weights"]


def baseline(name: str, steps: int, step_size: float, eps: float = EPS) -> dict:
    """``name`` with 3·``steps`` iterations (SEA's cost at ``steps`` per loss) and a fixed ``step_size``."""
    return dict(type=name, eps=eps, steps=3 * steps, step_size=step_size)


def tuned_steps(tuning_report: str | Path, eps: float, steps: int) -> dict[str, float]:
    """The step sizes a tuning run (its ``compare_attacks.json``) chose, checked to be for ``eps`` and ``steps``."""
    path = Path(tuning_report)
    if not path.is_file():
        raise SettingsError(f"tuning report {str(path)!r} does not exist: run the tuning split first")
    report = json.loads(path.read_text())
    if report.get("split") != "tune" or report.get("eps") != eps or report.get("steps") != steps:
        raise SettingsError(f"{path} is a {report.get('split')!r} run at eps {report.get('eps')} and steps "
                            f"{report.get('steps')}; this run needs a 'tune' run at eps {eps:g} and steps {steps}")
    return report["chosen_steps"]


def render(data: dict) -> str:
    """The page of one comparison: mIoU per attack, the steps chosen and SEA's margin."""
    lines = [f"Undefended {data.get('model', 'demo DeepLabV3')}, {'tuning' if data['split'] == 'tune' else 'reported'} split, first "
             f"{data['num_images']} images, ε = {data['eps']:g}; SEA: {data['steps']} APGD iterations per loss (3 "
             f"losses), baselines: {3 * data['steps']} iterations at a fixed step", "", "| attack | mIoU |", "|---|---|"]
    lines += [f"| {label} | {value:.2f} |" for label, value in data["mIoU"].items()]
    if "sea_class_weights" in data:
        lines += ["", "SEA's balanced cross-entropy weighs each class by its inverse pixel frequency on the training "
                      f"split: {', '.join(f'{w:.4f}' for w in data['sea_class_weights'])}."]
    sea_is = ("SEA (the lower of its merged run and the greedy search)" if any("greedy" in k for k in data["mIoU"])
              else "SEA")
    lines += ["", f"Step chosen per baseline: {', '.join(f'{n} {a:g}' for n, a in data['chosen_steps'].items())}; "
              f"{sea_is} is {data['sea_margin']:.2f} mIoU points below the strongest baseline."]
    return "\n".join(lines) + "\n"


REPORT = Report(render)


def compare_attacks(*, split: str, num_images: int, steps: int, work_dir: Path, eps: float = EPS,
                    step_sizes: dict[str, float] | None = None, checkpoint: str | Path | None = None,
                    sea_class_weights: list[float] | None = None, command: str | None = None) -> dict:
    """mIoU of the undefended demo model (or its architecture with ``checkpoint``'s weights) under SEA-``steps``
    and each baseline at 3·``steps`` iterations; ``sea_class_weights`` (e.g. ``training_class_weights()``)
    weight SEA's ``balanced_ce``, which otherwise takes each image's own label frequencies.

    ``split='tune'`` tries every step of ``STEP_FRACTIONS``·``eps`` per baseline and reports the best;
    ``split='val'`` runs each baseline at ``step_sizes`` (``tuned_steps`` of the tuning run). Writes
    ``work_dir/compare_attacks.{md,json}`` and returns the JSON's content.
    """
    if split not in ("tune", "val"):
        raise SettingsError(f"split must be 'tune' or 'val'; got {split!r}")
    if num_images < 1 or steps < 1:
        raise SettingsError(f"num_images and steps must be >= 1; got {num_images}, {steps}")
    step_sizes = dict(step_sizes or {})
    if split == "val" and any(step_sizes.get(name) is None for name in BASELINES):
        raise SettingsError(f"no tuned step size for {[n for n in BASELINES if step_sizes.get(n) is None]}: run "
                            f"split='tune' first")
    backend = MMSegBackend(ensure_tune_data() if split == "tune" else ensure_data(), num_images, work_dir,
                           None if checkpoint is None else Path(checkpoint))
    start = time.perf_counter()
    results: dict[str, float] = {}
    rows: dict[str, dict] = {}

    def run(label: str, cfg: dict | None) -> float:
        began = time.perf_counter()
        rows[label] = backend.cell(Cell(label, cfg), Cell("vanilla", None), work_dir / "records" / label)
        results[label] = rows[label]["mIoU"]
        print(f"{label}: mIoU {results[label]:.2f} ({time.perf_counter() - began:.0f} s)", flush=True)
        return results[label]

    run("clean", None)
    merged = run(f"SEA-{steps}", sea(steps, eps, sea_class_weights))
    # SEA as its authors report mIoU: the greedy search for the lowest dataset mIoU over its losses' outputs
    alone = {loss: f"SEA-{steps} {loss} alone" for loss in SEA_LOSSES}
    for loss, cfg in sea_per_loss(steps, eps, sea_class_weights).items():
        run(alone[loss], cfg)
    greedy_label = f"SEA-{steps}, greedy mIoU search over its losses"
    results[greedy_label] = backend.worst_case([rows[label] for label in alone.values()])["greedy_mIoU"]
    print(f"{greedy_label}: mIoU {results[greedy_label]:.2f}", flush=True)
    sea_miou = min(merged, results[greedy_label])
    chosen = {}
    for name in BASELINES:
        candidates = [f * eps for f in STEP_FRACTIONS] if split == "tune" else (step_sizes[name],)
        scores = {alpha: run(f"{name}-{3 * steps} step {alpha:g}", baseline(name, steps, alpha, eps))
                  for alpha in candidates}
        chosen[name] = min(scores, key=scores.get)
    strongest = min(results[f"{n}-{3 * steps} step {chosen[n]:g}"] for n in BASELINES)
    named = {} if backend.model_name == MMSegBackend.model_name else {"model": backend.model_name}
    if sea_class_weights is not None:
        named["sea_class_weights"] = sea_class_weights
    data = dict(**named, split=split, num_images=num_images, steps=steps, eps=eps, mIoU=results, chosen_steps=chosen,
                sea_margin=strongest - sea_miou, seconds=time.perf_counter() - start)
    REPORT.write(work_dir, "compare_attacks", data, command=command)
    return data
