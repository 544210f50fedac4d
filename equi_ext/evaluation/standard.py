"""The standard robustness evaluation of a defended demo model, in one call (AutoAttack's
``run_standard_evaluation`` for a test-time defense).

Parts, each timed:

1. **attacks** at ε: clean; the strongest attack (SEA where the model has dense logits, else APGD on the
   training losses) on the undefended model, transferred to the defended one, through the defense
   (BPDA: exact forward, gradient at the purified image) and through it with EOT over the defense's
   randomness; PGD (transfer), BPDA-PGD and the adaptive attack; the per-image worst case over every
   attacked run of a column and, for mIoU, the greedy search for the lowest dataset metric (quote the lower).
2. **convergence**: every attack the defended worst case takes an image from (and the strongest attack
   through the defense) again with its iterations doubled (at most ``max_doublings`` times) until the
   worst case moves by less than ``TOLERANCE``; every run joins the worst case, and one that never settles
   is reported as not converged.
3. **security curve**: the metric against ε for the undefended model (the attack on it) and the defended
   one (per-image worst case of transfer and through-defense), clean at ε = 0, as a table and a PNG. Each
   point is the per-image worst case over the runs at that ε *and every smaller one* (their adversarial
   images lie in the larger ball), and never above the point before it (``security_points``), so the curve
   never rises with ε; the runs at each ε alone are listed beside it, where a rise shows an attack that
   weakens at large budgets.

Every cell keeps per-image records under ``work_dir/cells``; ``resume`` reuses them.
"""

from __future__ import annotations

import io
import logging
import time
from pathlib import Path

from ..core.defense import PRESETS
from ..core.validation import SettingsError
from ..reporting import Report
from .backends import BACKENDS, DefenseCells, build_backend, check_framework
from .demo import DATA, EPS, ensure_data
from .sanity_checks import TOLERANCE, double_until_settled, moved_less_than_tolerance

logger = logging.getLogger(__name__)

EPSILONS = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
COLUMNS = ("vanilla", "defended")


def strongest_attack(backend, eps: float, steps: int, seed: int) -> dict:
    """SEA where the backend's model has dense logits, else APGD (its training losses)."""
    sea = dict(type="sea", eps=eps, steps=steps, seed=seed)
    return sea if backend.supports(sea) else dict(type="apgd", eps=eps, steps=steps, seed=seed)


def through_defense(attack: dict, eot_samples: int = 1) -> dict:
    return dict(type="bpda", attack=attack, eot_samples=eot_samples)


def attack_rows(backend, *, eps: float, steps: int, eot_samples: int, seed: int, lambda_e: float) -> dict:
    """Part 1 at ``steps`` iterations: family → (row label, column → attack config; ``None`` = clean), for
    the attacks the backend's model supports. Families name a row at any iteration count (the convergence
    check re-runs them doubled)."""
    strong = strongest_attack(backend, eps, steps, seed)
    name = f"{strong['type'].upper()}-{steps}"
    pgd = dict(type="pgd", eps=eps, steps=steps, seed=seed)
    rows = {
        "clean": ("clean", {"vanilla": None, "defended": None}),
        "strong": (f"{name} (undefended model)", {"vanilla": strong}),
        "strong transfer": (f"{name} transfer", {"defended": strong}),
        "strong bpda": (f"{name}-BPDA", {"defended": through_defense(strong)}),
        "strong eot": (f"EOT-{name}-BPDA ×{eot_samples}", {"defended": through_defense(strong, eot_samples)}),
        "pgd": (f"PGD-{steps}", {"vanilla": pgd, "defended": pgd}),
        "bpda pgd": (f"BPDA-PGD-{steps}", {"defended": dict(type="bpda", eps=eps, steps=steps, seed=seed)}),
        "adaptive": (f"adaptive-{steps} λ_e={lambda_e:g}",
                     {"defended": dict(type="adaptive", eps=eps, steps=steps, lambda_e=lambda_e, seed=seed)}),
    }
    return {family: row for family, row in rows.items() if all(backend.supports(c) for c in row[1].values())}


def security_points(curve: list[dict]) -> list[dict]:
    """The curve as reported: each column's point no higher than the one at the smaller ε before it.

    The whole set of adversarial images of a smaller ε is an attack at this one, so a robust number can only
    fall with ε. Pooling image by image already makes an mIoU curve fall; a dataset metric like mask AP can
    still rise when its images are chosen one by one (the choice follows each image's own loss, not the
    dataset's AP), so the lower of the two is the point."""
    points, lowest = [], {}
    for p in curve:
        lowest = {column: min(p[column], lowest.get(column, p[column])) for column in COLUMNS}
        points.append({**p, **lowest})
    return points


def plot_security_curve(data: dict) -> bytes:
    """PNG of the metric against ε, one line per column (matplotlib's object API: no pyplot state)."""
    from matplotlib.figure import Figure

    curve = security_points(data["security_curve"])
    fig = Figure(figsize=(5.5, 4.0))
    ax = fig.add_subplot()
    x = list(range(len(curve)))
    for column, marker in zip(COLUMNS, "os"):
        ax.plot(x, [p[column] for p in curve], f"{marker}-", label=column)
    ax.set_xticks(x, [f"{p['eps']:g}" for p in curve])
    ax.set_xlabel("ε (pixel levels of 255)")
    ax.set_ylabel(f"{data['metric_name']} (%)")
    ax.set_ylim(bottom=0)
    ax.set_title(f"{data['model']}, {data['attack'].upper()}-{data['steps']}, {data['num_images']} images", fontsize=9)
    ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    return buffer.getvalue()


def render(data: dict) -> str:
    """The Markdown report of a ``standard_evaluation`` result (its JSON), so a committed result re-renders
    without re-running the evaluation."""
    metric, worst_cases, convergence = data["metric_name"], data["worst_case"], data["convergence"]
    pooled = any("single_eps" in p for p in data["security_curve"])  # not in results written before the curve pooled ε
    sea = data["attack"] == "sea"
    strong = f"{data['attack'].upper()}-{data['steps']}"
    clean = data["attacks"]["clean"]
    lines = [f"# Standard robustness evaluation: {data['model']}", "",
             f"{metric} (%) on the first {data['num_images']} val images, ε = {data['eps']:g}/255, seed "
             f"{data['seed']}; defense: equivariance, {data['settings']}. Strongest attack: {strong} ("
             + ("SEA: APGD with masked CE, balanced CE and JS, radii 2ε → 1.5ε → ε" if sea else
                "APGD on the training losses") + f"; {data['steps']} iterations{' per loss' if sea else ''}). BPDA = "
             "exact forward through the defense, gradient at the purified image; EOT averages that gradient over "
             f"{data['eot_samples']} draws of the defense.", ""]
    if data.get("command"):  # results written before the provenance footer named it
        lines += [f"Command: `{data['command']}`", ""]
    lines += ["## Attacks", "", "| attack | vanilla | defended |", "|---|---|---|"]
    for label, values in data["attacks"].items():
        lines.append(f"| {label} | " + " | ".join(f"{values[c]:.2f}" if c in values else "—" for c in COLUMNS) + " |")
    for name, field in (("worst case (per image)", "per_image"), ("worst case (greedy, dataset metric)", "greedy")):
        if worst_cases["defended"][field] is not None:
            lines.append(f"| **{name}** | " + " | ".join(f"{worst_cases[c][field]:.2f}" for c in COLUMNS) + " |")
    lines += ["", "The defended worst case pools every attacked run of the defended column, the convergence runs "
              f"included. **Quoted robust {metric}: {worst_cases['defended']['quoted']:.2f} defended, "
              f"{worst_cases['vanilla']['quoted']:.2f} undefended** (clean {clean['defended']:.2f} / "
              f"{clean['vanilla']:.2f}).", "", "## Convergence", "",
              f"Iterations doubled (at most {convergence['max_doublings']} times) for every attack the defended worst "
              f"case takes an image from, and for {strong}-BPDA, until the worst case moves by less than "
              f"{convergence['tolerance']} points: "
              + "; ".join(f"{p['steps']} iterations" + (f" (ran {', '.join(p['ran'])})" if p["ran"] else "")
                          + f": {p['worst_case']:.2f}" for p in convergence["curve"])
              + {True: ". **Converged.**", None: ". Not checked (no doublings asked for).",
                 False: ". **Not converged**: the quoted number may still be too high."}[convergence["converged"]],
              "", "## Security curve", "",
              f"{strong} at each ε: undefended model; defended = per-image worst case of transfer and through-defense "
              "(BPDA)." + (" Each point takes every image's worst over the runs at that ε and all smaller ones (their "
                           "adversarial images lie in the larger ball); the rows marked *at this ε only* leave the "
                           "smaller runs out; a point is never above the one before it (the smaller ε's adversarial "
                           "images are an attack at this ε too)." if pooled else "") + " ε = 0 is clean.", "",
              "| ε | " + " | ".join(f"{p['eps']:g}" for p in data["security_curve"]) + " |",
              "|---" * (len(data["security_curve"]) + 1) + "|"]
    for column in COLUMNS:
        lines.append(f"| {column} | " + " | ".join(f"{p[column]:.2f}" for p in security_points(data["security_curve"]))
                     + " |")
    if pooled:
        for column in COLUMNS:
            lines.append(f"| {column}, at this ε only | " + " | ".join(
                f"{p['single_eps'][column]:.2f}" if "single_eps" in p else f"{p[column]:.2f}"
                for p in data["security_curve"]) + " |")
    seconds = data["seconds"]
    lines += ["", "![security curve](security_curve.png)", "", "## Time", "",
              ", ".join(f"{part} {s:.0f} s" for part, s in seconds.items()) + f"; total {sum(seconds.values()):.0f} s "
              "(this invocation: cells reused with `--resume` count 0 s; each cell's own time is in the JSON)."]
    return "\n".join(lines) + "\n"


REPORT = Report(render, {"security_curve.png": plot_security_curve})


class CellRuns(DefenseCells):
    """The cells one standard evaluation runs, and the per-image worst case of a column over some of its rows."""

    def worst(self, column: str, labels: list[str]) -> dict:
        key = self.backend.key
        attacked = [self.runs[(label, column)] for label in labels if self.runs[(label, column)]["attack"] != "clean"]
        found = self.backend.worst_case(attacked)
        picks = found["picks"] + found.get("greedy_picks", [])
        return dict(per_image=found[key], greedy=found.get(f"greedy_{key}"), picks=found["picks"],
                    quoted=min(v for v in (found[key], found.get(f"greedy_{key}")) if v is not None),
                    taken_from=sorted({pick.split(" / ")[0] for pick in picks}))


def attacks_part(cells: CellRuns, steps: int, settings: dict) -> tuple[dict, dict]:
    """Part 1: every attack row at ε and the per-image worst case of each column; returns (rows, worst cases)."""
    rows = attack_rows(cells.backend, steps=steps, **settings)
    logger.info("part 1/3: %d attacked and clean runs at ε = %g", sum(len(c) for _, c in rows.values()),
                settings["eps"])
    for label, columns in rows.values():
        for column, attack in columns.items():
            cells.run(label, column, attack)
    return rows, {column: cells.worst(column, [label for label, cols in rows.values() if column in cols])
                  for column in COLUMNS}


def convergence_part(cells: CellRuns, rows: dict, worst_cases: dict, steps: int, settings: dict,
                     max_doublings: int) -> dict:
    """Part 2: double the iterations of every attack the defended worst case takes an image from (and of the
    strongest attack through the defense), pool the new runs, until the worst case settles; updates
    ``worst_cases['defended']`` and returns the convergence record."""
    family_of = {label: family for family, (label, _) in rows.items()}
    pooled = [label for label, cols in rows.values() if "defended" in cols]
    ran_at: dict[int, list[str]] = {}
    logger.info("part 2/3: convergence, doubling the iterations of the attacks the worst case draws on "
                "(at most %d times, until it moves < %g)", max_doublings, TOLERANCE)

    def doubled_worst_case(more: int) -> float:
        logger.info("worst case %.2f at %d iterations; doubling to %d", worst_cases["defended"]["quoted"],
                    more // 2, more)
        doubled = attack_rows(cells.backend, steps=more, **settings)
        taken = {family_of[label] for label in worst_cases["defended"]["taken_from"]} | {"strong bpda"}
        ran_at[more] = []
        for family in (f for f in doubled if f in taken):
            label, columns = doubled[family]
            cells.run(label, "defended", columns["defended"])
            family_of[label] = family
            pooled.append(label)
            ran_at[more].append(label)
        worst_cases["defended"] = cells.worst("defended", pooled)
        return worst_cases["defended"]["quoted"]

    points = double_until_settled(steps, doubled_worst_case, max_doublings=max_doublings,
                                  first=worst_cases["defended"]["quoted"])
    return dict(curve=[dict(steps=n, worst_case=value, ran=ran_at.get(n, [])) for n, value in points],
                converged=moved_less_than_tolerance(points) if max_doublings else None,  # None: not checked
                tolerance=TOLERANCE, max_doublings=max_doublings)


def security_curve_part(cells: CellRuns, epsilons: tuple[float, ...], eps: float, steps: int, seed: int) -> list[dict]:
    """Part 3: each column's per-image worst case at each ε of ``epsilons`` (clean at 0), pooled with every
    smaller ε's runs."""
    key = cells.backend.key
    logger.info("part 3/3: security curve at ε ∈ {%s}", ", ".join(f"{e:g}" for e in sorted(set(epsilons))))
    curve, smaller = [], {column: [] for column in COLUMNS}
    for level in sorted(set(epsilons)):
        if level == 0:
            point = {column: cells.runs[("clean", column)][key] for column in COLUMNS}
        else:
            attack = strongest_attack(cells.backend, level, steps, seed)  # at ε = eps: part 1's runs
            name, at = f"{attack['type'].upper()}-{steps}", ("" if level == eps else f" at ε={level:g}")
            labels = {"vanilla": [f"{name} (undefended model){at}"],
                      "defended": [f"{name} transfer{at}", f"{name}-BPDA{at}"]}
            cells.run(labels["vanilla"][0], "vanilla", attack)
            cells.run(labels["defended"][0], "defended", attack)
            cells.run(labels["defended"][1], "defended", through_defense(attack))
            # The adversarial images of every smaller ε lie in this ball too: each image keeps its worst over
            # them, so the curve cannot rise with ε however the attack behaves at one budget.
            point, single = {}, {}
            for column in COLUMNS:
                smaller[column] += labels[column]
                point[column] = cells.worst(column, smaller[column])["quoted"]
                single[column] = cells.worst(column, labels[column])["quoted"]
            point["single_eps"] = single
        curve.append(dict(eps=level, **point))
    return curve


def check_settings(*, framework: str, num_images: int, eps: float, steps: int, eot_samples: int, max_doublings: int,
                   epsilons: tuple[float, ...], preset: str, checkpoint: Path | None) -> None:
    """A ``SettingsError`` for anything :func:`standard_evaluation` could not run, before it runs anything."""
    if num_images < 1 or steps < 1 or eot_samples < 1 or max_doublings < 0:
        raise SettingsError("num_images, steps and eot_samples must be >= 1 and max_doublings >= 0; got "
                            f"{num_images}, {steps}, {eot_samples}, {max_doublings}")
    if not 0 < eps <= 255 or not epsilons or any(not 0 <= e <= 255 for e in epsilons):
        raise SettingsError(f"eps must be in (0, 255] and the curve's ε in [0, 255]; got {eps}, {list(epsilons)}")
    if checkpoint and not Path(checkpoint).is_file():
        raise SettingsError(f"checkpoint {checkpoint} does not exist")
    check_framework(framework)
    if BACKENDS[framework].takes_preset and preset not in PRESETS:
        raise SettingsError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")


def standard_evaluation(*, framework: str = "mmseg", num_images: int = 8, eps: float = EPS, steps: int = 10,
                        eot_samples: int = 2, max_doublings: int = 3, epsilons: tuple[float, ...] = EPSILONS,
                        lambda_e: float = 1.0, seed: int = 0, preset: str = "fast", data_root: Path = DATA,
                        checkpoint: Path | None = None, work_dir: Path, resume: bool = False,
                        command: str | None = None) -> dict:
    """Run the three parts on the demo DeepLabV3 (mIoU) or, with ``framework='detectron2'``, the demo Mask
    R-CNN (mask AP); write ``work_dir/standard_evaluation.{md,json,csv}`` and ``security_curve.png``; return the JSON's
    content.

    Raises:
        SettingsError: an unknown framework, budgets out of range (``num_images``, ``steps``, ``eot_samples`` < 1; ``eps`` or an
            ε of the curve outside [0, 255]; ``max_doublings`` < 0), a missing checkpoint — before anything runs.
    """
    check_settings(framework=framework, num_images=num_images, eps=eps, steps=steps, eot_samples=eot_samples,
                   max_doublings=max_doublings, epsilons=epsilons, preset=preset, checkpoint=checkpoint)
    out = Path(work_dir)
    if Path(data_root) == DATA:
        ensure_data()
    backend = build_backend(framework, Path(data_root), num_images, out, Path(checkpoint) if checkpoint else None,
                            preset)
    cells = CellRuns(backend, out, resume)
    settings = dict(eps=eps, eot_samples=eot_samples, seed=seed, lambda_e=lambda_e)
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    rows, worst_cases = attacks_part(cells, steps, settings)
    seconds["attacks"] = time.perf_counter() - start
    start = time.perf_counter()
    convergence = convergence_part(cells, rows, worst_cases, steps, settings, max_doublings)
    seconds["convergence"] = time.perf_counter() - start
    start = time.perf_counter()
    curve = security_curve_part(cells, epsilons, eps, steps, seed)
    seconds["security curve"] = time.perf_counter() - start

    key, runs = backend.key, cells.runs
    strong_type = rows["strong"][1]["vanilla"]["type"]  # sea, or apgd without dense logits
    data = dict(framework=backend.framework, model=backend.model_name, metric=key, metric_name=backend.metric,
                num_images=num_images, eps=eps, steps=steps, attack=strong_type, eot_samples=eot_samples,
                seed=seed, settings=backend.settings, defense=cells.defense,
                attacks={label: {c: runs[(label, c)][key] for c in columns} for label, columns in rows.values()},
                worst_case=worst_cases, convergence=convergence, security_curve=curve, seconds=seconds,
                cells=[{k: v for k, v in cell.items() if k != "per_image"} for cell in runs.values()])
    csv_rows = [dict(attack=label, column=column, value=cell[key], seconds=cell["seconds"])
                for (label, column), cell in runs.items()]
    REPORT.write(out, "standard_evaluation", data, csv_rows, command)
    return data
