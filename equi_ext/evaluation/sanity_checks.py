"""The evaluation-honesty checks (Athalye et al. 2018, Carlini et al. 2019, Croce et al. 2022): is a defense's
robustness real or an artefact of weak attacks?

Every attacked run goes through the framework's own evaluation against the defended demo model (MMSeg's test
loop with ``PerImageIoUMetric``, or Detectron2's ``inference_on_dataset`` + ``COCOEvaluator``). The checks and
the per-image worst case over every ε-bounded run are described in ``tools/sanity_checks.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from ..core.validation import SettingsError
from ..reporting import Report
from .backends import DefenseCells, build_backend, check_framework
from .demo import DATA, EPS, ensure_data

logger = logging.getLogger(__name__)

TOLERANCE = 0.5  # mIoU / AP points: "moved" / "stronger" below this is noise on a few images
#: Check (a): an untargeted attack with the whole pixel range can make every pixel wrong, so the unbounded
#: attack must leave below this (percent) of pixels right (of mask AP points without dense predictions).
UNBOUNDED_FLOOR = 1.0


def unbounded_check(vanilla: float, defended: float, measure: str) -> tuple[bool, str]:
    """(passed, numbers) of check (a): the unbounded attack leaves < ``UNBOUNDED_FLOOR`` of ``measure``
    on the undefended model (else the attack itself is broken at large budgets and the check says nothing
    about the defense) and the defended model is held to the same."""
    attack_works, defense_falls = vanilla < UNBOUNDED_FLOOR, defended < UNBOUNDED_FLOOR
    verdict = ("" if attack_works else "the attack fails on the undefended model; ") + (
        "" if defense_falls else "the defended model keeps more")
    return attack_works and defense_falls, (f"{measure}: vanilla {vanilla:.2f}, defended {defended:.2f} (pass: both "
                                            f"< {UNBOUNDED_FLOOR:g}{'; ' + verdict.rstrip('; ') if verdict else ''})")


def moved_less_than_tolerance(points: list[tuple[int, float]]) -> bool:
    """True when the last doubling moved the value by less than ``TOLERANCE``."""
    return len(points) > 1 and abs(points[-1][1] - points[-2][1]) < TOLERANCE


def double_until_settled(steps: int, measure: Callable[[int], float], *, max_doublings: int,
                         first: float | None = None) -> list[tuple[int, float]]:
    """The convergence loop of the honest evaluations: ``measure`` at ``steps``, then at twice as many iterations
    each time, until a doubling moves the value by less than ``TOLERANCE`` or ``max_doublings`` have run.
    ``first`` is the value at ``steps`` when it is already measured. Returns the (iterations, value) points."""
    points = [(steps, measure(steps) if first is None else first)]
    while len(points) <= max_doublings and not moved_less_than_tolerance(points):
        steps *= 2
        points.append((steps, measure(steps)))
    return points


def settles(curve: list[tuple[int, float]]) -> tuple[bool, str]:
    """(passed, numbers) of a steps-doubling curve: never more than ``TOLERANCE`` above the previous point
    (more steps never look weaker) and a last change below ``TOLERANCE`` (converged)."""
    rising = any(b[1] > a[1] + TOLERANCE for a, b in zip(curve, curve[1:]))
    return (not rising and moved_less_than_tolerance(curve), "curve " + ", ".join(f"{s}: {m:.2f}" for s, m in curve)
            + f" (pass: non-increasing within {TOLERANCE}, last change < {TOLERANCE})")


def render(data: dict) -> str:
    """The checklist page: each check with pass/FAIL and its numbers, then the per-image worst case."""
    metric, key, runs = data["metric_name"], data["metric"], data["runs"]
    lines = [f"{data['model']}, first {data['num_images']} val images (seed 0), {data['settings']}, ε = "
             f"{data['eps']:g}", "", f"clean {runs['clean'][key]:.2f}, clean + defense "
             f"{runs['clean + defense'][key]:.2f}, PGD-{data['steps']} on vanilla {runs['PGD (vanilla)'][key]:.2f} "
             f"({metric})", "", "| check | what | result | numbers |", "|---|---|---|---|"]
    for check in data["checks"]:
        lines.append(f"| ({check['check']}) | {check['what']} | {'pass' if check['passed'] else 'FAIL'} | "
                     f"{check['numbers']} |")
    picks = data["worst_case_picks"]
    taken = {name: picks.count(name) for name in dict.fromkeys(picks)}
    lines += ["", f"**Per-image worst case over the {data['bounded_runs']} ε = {data['eps']:g} runs: {metric} "
              f"{data['worst_case']:.2f}** (strongest single run {data['strongest_single']:.2f}); images taken from: "
              + ", ".join(f"{k.split(' / ')[0]} ×{v}" for k, v in taken.items())]
    if data["greedy_worst_case"] is not None:
        lines += ["", f"Greedy search for the lowest dataset {metric} over the same runs: "
                  f"{data['greedy_worst_case']:.2f} (quote the lower of the two)."]
    return "\n".join(lines) + "\n"


REPORT = Report(render)


def sanity_checks(*, framework: str = "mmseg", num_images: int = 8, preset: str = "fast", steps: int = 10,
                   bpda_steps: int = 5, max_bpda_steps: int = 160, restarts: int = 2,
                   lambdas: tuple[float, ...] = (0.1, 1.0, 10.0), eot_samples: int = 2, data_root: Path = DATA,
                   work_dir: Path, resume: bool = False, command: str | None = None) -> dict:
    """Run checks (a)–(g) and the worst case on the demo model's equivariance defense; write
    ``work_dir/sanity_checks.{md,json}`` and return the JSON's content.

    Raises:
        ValueError: an unknown framework, ``num_images`` < 1 or not 1 <= ``bpda_steps`` <= ``max_bpda_steps``.
    """
    check_framework(framework)
    if num_images < 1 or bpda_steps < 1 or max_bpda_steps < bpda_steps:
        raise SettingsError("need num_images >= 1 and 1 <= bpda_steps <= max_bpda_steps")
    out = Path(work_dir)
    out.mkdir(parents=True, exist_ok=True)
    if Path(data_root) == DATA:
        ensure_data()

    logger.info("checks (a)–(g): BPDA doubled from %d to %d steps, APGD doubled, transfer, adaptive, unrolled, "
                "unbounded", bpda_steps, max_bpda_steps)
    backend = build_backend(framework, Path(data_root), num_images, out, preset=preset)
    runs = SanityCheckRuns(backend, out, resume)
    runs.attack(steps=steps, bpda_steps=bpda_steps, max_bpda_steps=max_bpda_steps, restarts=restarts,
                lambdas=lambdas, eot_samples=eot_samples)
    checks = runs.checks(steps=steps, bpda_steps=bpda_steps, restarts=restarts)
    key, bounded = backend.key, runs.bounded
    worst = backend.worst_case(bounded)
    result = dict(framework=backend.framework, model=backend.model_name, metric=key, metric_name=backend.metric,
                  settings=backend.settings, num_images=num_images, eps=EPS, steps=steps, bounded_runs=len(bounded),
                  worst_case=worst[key], greedy_worst_case=worst.get(f"greedy_{key}"),
                  strongest_single=min(r[key] for r in bounded), bpda_curve=runs.curve, apgd_curve=runs.apgd_curve,
                  checks=[dict(check=k, what=w, passed=p, numbers=n) for k, w, p, n in checks],
                  runs={label: {k: v for k, v in r.items() if k != "per_image"} for label, r in runs.rows.items()},
                  worst_case_picks=worst["picks"])
    REPORT.write(out, "sanity_checks", result, command=command)
    return result


class SanityCheckRuns:
    """The runs checks (a)–(g) read, on one backend: ``rows`` by label, ``bounded`` (every ε-bounded attack on the
    defended model: the worst case pools them), the BPDA and APGD doubling curves and the adaptive sweep."""

    def __init__(self, backend, out: Path, resume: bool) -> None:
        self.backend, self.cells = backend, DefenseCells(backend, out, resume)
        self.rows: dict[str, dict] = {}
        self.bounded: list[dict] = []
        self.adaptive: dict[float, float] = {}
        self.curve: list[tuple[int, float]] = []
        self.apgd_curve: list[tuple[int, float]] = []
        self.eot_label = self.unbounded_label = ""

    def run(self, label: str, attack: dict | None, defended: bool = True, bounded: bool = False) -> dict:
        """The cell of ``label``, kept in ``rows`` (and in ``bounded`` with ``bounded``)."""
        row = self.cells.run(label, "defended" if defended else "vanilla", attack)
        self.rows[label] = row
        if bounded:
            self.bounded.append(row)
        return row

    def doubling_curve(self, name: str, bpda_steps: int, max_bpda_steps: int) -> list[tuple[int, float]]:
        """``name`` (through the defense) with steps doubled from ``bpda_steps`` until the metric moves by
        less than ``TOLERANCE`` or the next count would pass ``max_bpda_steps``; every run joins ``bounded``."""
        def measure(now: int) -> float:
            attack = dict(type=name, eps=EPS, steps=now)
            label = f"{name.upper()}-{now}"
            return self.run(label, attack if name == "bpda" else dict(type="bpda", attack=attack),
                            bounded=True)[self.backend.key]

        return double_until_settled(bpda_steps, measure, max_doublings=(max_bpda_steps // bpda_steps).bit_length() - 1)

    def attack(self, *, steps: int, bpda_steps: int, max_bpda_steps: int, restarts: int, lambdas: tuple[float, ...],
               eot_samples: int) -> None:
        """Every run of the checks, in the order the page lists them."""
        key, supports_sea = self.backend.key, self.backend.supports(dict(type="sea"))
        pgd = dict(type="pgd", eps=EPS, steps=steps)
        self.run("clean", None, defended=False)
        self.run("clean + defense", None)
        self.run("PGD (vanilla)", pgd, defended=False)
        for restart in range(restarts):
            self.run(f"PGD-{steps} transfer, restart {restart}", dict(pgd, seed=restart), bounded=True)
        self.curve = self.doubling_curve("bpda", bpda_steps, max_bpda_steps)
        # its step size adapts: unlike BPDA's fixed 2.5ε/steps it should settle
        self.apgd_curve = self.doubling_curve("apgd", bpda_steps, max_bpda_steps)
        final = self.apgd_curve[-1][0]
        if supports_sea:
            self.run(f"SEA-{final}", dict(type="bpda", attack=dict(type="sea", eps=EPS, steps=final)), bounded=True)
        self.eot_label = f"EOT-BPDA-{bpda_steps} ({eot_samples} samples)"
        self.run(self.eot_label, dict(type="eot", eps=EPS, steps=bpda_steps, samples=eot_samples), bounded=True)
        for lam in lambdas:
            self.adaptive[lam] = self.run(f"adaptive λ_e={lam:g}",
                                          dict(type="adaptive", eps=EPS, steps=steps, lambda_e=lam), bounded=True)[key]
        self.run(f"unrolled-{steps}", dict(type="unrolled", eps=EPS, steps=steps), bounded=True)
        # (a) the strongest attack with the whole pixel range, as many iterations as APGD's curve ended with
        unbounded = dict(dict(type="sea") if supports_sea else dict(type="apgd"), eps=255.0, steps=final)
        self.unbounded_label = f"{unbounded['type'].upper()}-{final} at ε=255"
        self.run(self.unbounded_label, dict(type="bpda", attack=unbounded))
        self.run(f"{self.unbounded_label} (vanilla)", unbounded, defended=False)

    def checks(self, *, steps: int, bpda_steps: int, restarts: int) -> list[tuple[str, str, bool, str]]:
        """(check, what, passed, numbers) of checks (a)–(g) over the runs."""
        rows, key, measure = self.rows, self.backend.key, self.backend.unbounded_measure
        unbounded_label, eot_label, curve, adaptive = self.unbounded_label, self.eot_label, self.curve, self.adaptive
        unrolled_label = f"unrolled-{steps}"
        transfer = min(rows[f"PGD-{steps} transfer, restart {r}"][key] for r in range(restarts))
        bpda = curve[-1][1]
        return [
            ("a", f"{unbounded_label} leaves < {UNBOUNDED_FLOOR:g} {measure[0]} on the vanilla and the defended model",
             *unbounded_check(measure[1](rows[f"{unbounded_label} (vanilla)"]), measure[1](rows[unbounded_label]),
                              measure[0])),
            ("b", "more BPDA steps never look stronger; converged", *settles(curve)),
            ("c", "BPDA and EOT-BPDA at least as strong as transfer", bpda <= transfer + TOLERANCE
             and rows[eot_label][key] <= rows[f"BPDA-{bpda_steps}"][key] + 2 * TOLERANCE,
             f"BPDA-{curve[-1][0]} {bpda:.2f}, {eot_label} {rows[eot_label][key]:.2f}, transfer {transfer:.2f}"),
            ("d", "adaptive λ_e sweep at least as strong as PGD transfer",
             min(adaptive.values()) <= transfer + TOLERANCE,
             ", ".join(f"λ_e={k:g}: {v:.2f}" for k, v in adaptive.items()) + f"; transfer {transfer:.2f}"),
            ("e", "transfer from the vanilla model", True,
             f"PGD-{steps} on vanilla {rows['PGD (vanilla)'][key]:.2f}; then defended "
             + ", ".join(f"{rows[f'PGD-{steps} transfer, restart {r}'][key]:.2f}" for r in range(restarts))),
            ("f", "white-box through the unrolled defense no stronger than BPDA",
             rows[unrolled_label][key] >= bpda - TOLERANCE,
             f"{unrolled_label} {rows[unrolled_label][key]:.2f}, BPDA-{curve[-1][0]} {bpda:.2f}"),
            ("g", "more APGD iterations (through the defense) never look stronger; converged",
             *settles(self.apgd_curve)),
        ]
