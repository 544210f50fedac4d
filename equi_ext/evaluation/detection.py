"""Attack and corruption detection by equivariance, and detect-then-defend, on the demo model.

A defense that is only switched on when an input looks attacked keeps the clean accuracy and cost of
the undefended model; whether that is safe depends on how well the score separates clean from
attacked (and corrupted) images and on whether an attacker who knows the detector slips past it.
``detect_attacks`` measures the three:

1. Scores per image (``model.test_cfg.score``): the equivariance cosine (the detector's
   transforms; low = suspicious), paper Eq. 16's output variance (high = suspicious), and the
   baselines' invariance cosine and rotation-prediction loss (a trained rotation head). On the
   first N images of the reported split: AUROC (scikit-learn) of clean vs PGD and clean vs each
   common corruption (``imagecorruptions``), ROC curves as PNG.
2. Threshold = a percentile of the clean equivariance scores of the tuning split (seed 1). On the
   reported split: mIoU and seconds, clean and under PGD, for vanilla / equivariance / the detector
   alone (flags nothing: its cost) / detect-then-defend, and the share flagged.
3. Detect-then-defend attacked: the adaptive attack (a λ_e sweep) that also maximises the
   detector's score, with the share of attacked images that slip through (not flagged).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from ..core.validation import SettingsError
from ..data.corruptions import CORRUPTIONS, check_corruptions
from ..reporting import Report
from .demo import DATA, EPS, SSL_HEADS, build_demo_runner, ensure_data, ensure_tune_data

logger = logging.getLogger(__name__)

PGD = dict(type="pgd", eps=EPS)
#: per-image scores compared as detectors (see score_cfg and sign in detect_attacks)
SCORE_KINDS = ("equivariance", "output_variance", "invariance", "rotation")
#: +1 where a high score is suspicious, −1 where a low one is
SIGN = {"equivariance": -1.0, "output_variance": 1.0, "invariance": -1.0, "rotation": -1.0}


def render(data: dict) -> str:
    """The detection page of a result: AUROC per condition and score, the threshold, detect-then-defend."""
    import numpy as np

    from ..mmseg.evaluation import grid_table

    kinds, auroc, grid = data["score_kinds"], data["auroc"], data["grid"]
    lines = [f"Demo DeepLabV3, first {data['num_images']} images of the reported split (seed 0); corruptions at "
             f"severity {data['severity']}; detector transforms: {data['score_transforms'] or 'those of the defense'}",
             "", "AUROC (scikit-learn), clean vs …", "", "| condition | " + " | ".join(kinds) + " |",
             "|---" * (len(kinds) + 1) + "|"]
    for condition, values in auroc.items():
        lines.append(f"| {condition} | " + " | ".join(f"{values[k]:.3f}" for k in kinds) + " |")
    corrupted = [c for c in auroc if c in data["corruptions"]]
    if corrupted:
        lines.append("| mean of the corruptions | " + " | ".join(
            f"{np.mean([auroc[c][k] for c in corrupted]):.3f}" for k in kinds) + " |")
    lines += ["", f"Threshold ({data['clean_percentile']:g}th percentile of the tuning split's clean equivariance "
              f"scores): {data['threshold']:.3f}", "", "mIoU", "", grid_table(grid), "", "seconds", "",
              grid_table(grid, "seconds", "{:.0f}"), "", "| attack | flagged | slipped through |", "|---|---|---|"]
    slipped = data["slipped_through"]
    lines += [f"| {a} | {share:.0%} | " + (f"{slipped[a]:.0%}" if a in slipped else "—") + " |"
              for a, share in data["flagged"].items()]
    lines += ["", "![ROC curves](roc_curves.png)"]
    return "\n".join(lines) + "\n"


def plot_roc_curves(data: dict) -> bytes:
    """ROC curves of clean vs each condition, one panel per condition, from the result's per-image scores."""
    import io

    import numpy as np
    from matplotlib.figure import Figure  # object API: no pyplot state, no backend switch
    from sklearn.metrics import roc_curve

    clean, conditions = data["scores"]["clean"], [c for c in data["scores"] if c != "clean"]
    cols = min(4, len(conditions))
    grid_rows = -(-len(conditions) // cols)
    fig = Figure(figsize=(3.2 * cols, 3.2 * grid_rows))
    axes = fig.subplots(grid_rows, cols, squeeze=False)
    for ax, condition in zip(axes.flat, conditions):
        for kind in data["score_kinds"]:
            labels = np.r_[np.zeros(len(clean[kind])), np.ones(len(data["scores"][condition][kind]))]
            fpr, tpr, _ = roc_curve(labels, SIGN[kind] * np.r_[clean[kind], data["scores"][condition][kind]])
            ax.plot(fpr, tpr, label=f"{kind} {data['auroc'][condition][kind]:.2f}")
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.set_title(f"clean vs {condition}", fontsize=9)
        ax.set_xlabel("false positive rate", fontsize=8)
        ax.set_ylabel("true positive rate", fontsize=8)
        ax.legend(loc="lower right", fontsize=6, title="AUROC", title_fontsize=6)
    for ax in list(axes.flat)[len(conditions):]:
        ax.axis("off")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


REPORT = Report(render, {"roc_curves.png": plot_roc_curves})


def tuning_threshold(detector: dict, num_images: int, percentile: float, work_dir: str | Path,
                     tune_root: str | Path | None = None) -> float:
    """The ``percentile``-th percentile of ``detector``'s clean scores on the first ``num_images`` images of the
    tuning split (``tune_root``, default the seed-1 demo split): the threshold detect-then-defend is given."""
    import numpy as np

    from ..mmseg.evaluation import evaluate_grid

    tune = build_demo_runner(Path(tune_root) if tune_root else ensure_tune_data(), num_images, Path(work_dir))
    (row,) = evaluate_grid(tune, {"detector": detector}, {"clean": None})
    return float(np.percentile(row["image_scores"], percentile))


def check_settings(*, num_images: int, attack_steps: int, corruptions: list[str], severity: int,
                   score_kinds: list[str], rotation_head: str) -> None:
    """A ``SettingsError`` for anything :func:`detect_attacks` could not run, before it runs anything."""
    check_corruptions(corruptions, [severity])
    for name in score_kinds:
        if name not in SCORE_KINDS:
            raise SettingsError(f"unknown score {name!r}; valid names: {', '.join(SCORE_KINDS)}")
    if "rotation" in score_kinds and not Path(rotation_head).is_file():
        raise SettingsError(f"the rotation score needs its head {rotation_head}: train it with tools/train_ssl_head.py")
    if num_images < 2 or attack_steps < 1:
        raise SettingsError("num_images must be >= 2 and attack_steps >= 1")


def scores_of(runner, attack: dict | None, score_kinds: list[str], detector: dict, rotation_head: str) -> dict:
    """Per-image scores of every kind (numpy arrays), for the runner's images (attacked first if ``attack``); the
    equivariance kind is the detector's own score (its transforms)."""
    import numpy as np

    from ..mmseg.evaluation import evaluate_grid

    score_cfg = {"equivariance": "equivariance", "output_variance": "output_variance", "invariance": "invariance",
                 "rotation": dict(type="rotation", head=rotation_head)}
    result = {}
    for kind in score_kinds:
        defense = detector if kind == "equivariance" else None
        (row,) = evaluate_grid(runner, {kind: defense}, {"x": attack}, settings=dict(score=score_cfg[kind]))
        result[kind] = np.array(row["image_scores"])
    return result


def auroc_part(conditions: dict[str, dict], score_kinds: list[str], num_images: int) -> dict:
    """Part 1's AUROC of clean against each other condition, per score kind (scores as :func:`scores_of`)."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    labels = np.r_[np.zeros(num_images), np.ones(num_images)]
    return {condition: {kind: float(roc_auc_score(labels, SIGN[kind] * np.r_[conditions["clean"][kind],
                                                                           scores[kind]]))
                        for kind in score_kinds}
            for condition, scores in conditions.items() if condition != "clean"}


def detect_then_defend_part(val, detector: dict, threshold: float, pgd: dict, attack_steps: int,
                            lambdas: list[float]) -> tuple[list[dict], dict[str, float]]:
    """Parts 2 and 3 on the reported split: the grid (vanilla, equivariance, the detector alone, detect-then-defend
    under clean, PGD and the adaptive attack on the detector's own score) and the share of each attack flagged."""
    import numpy as np

    from ..mmseg.evaluation import evaluate_grid

    dtd = dict(detector, threshold=threshold)
    attacks = {"clean": None, f"PGD-{attack_steps}": pgd}
    for lam in lambdas:  # white-box on the detector's own score (pipeline: score_defense = its scorer)
        attacks[f"adaptive λ_e={lam:g}"] = dict(type="adaptive", eps=EPS, steps=attack_steps, lambda_e=lam)
    defenses = {"vanilla": None, "equivariance": dict(type="equi"), "detector alone": detector,
                "detect-then-defend": dtd}
    grid = evaluate_grid(val, defenses, {a: c for a, c in attacks.items() if not a.startswith("adaptive")})
    grid += evaluate_grid(val, {"detector alone": detector, "detect-then-defend": dtd},
                          {a: c for a, c in attacks.items() if a.startswith("adaptive")})
    cell = {(r["attack"], r["defense"]): r for r in grid}
    flagged = {a: float(np.mean(~(np.array(cell[(a, "detector alone")]["image_scores"]) >= threshold))) for a in attacks}
    return grid, flagged


def detect_attacks(*, num_images: int = 16, score_transforms: Sequence[str] | None = None,
                   clean_percentile: float = 5.0, corruptions: Sequence[str] = CORRUPTIONS, severity: int = 3,
                   scores: Sequence[str] = SCORE_KINDS,
                   rotation_head: str | Path = SSL_HEADS["mmseg"]["rotation"],
                   lambdas: Sequence[float] = (0.1, 1.0, 10.0, 100.0), attack_steps: int = 20,
                   data_root: str | Path = DATA, tune_root: str | Path | None = None,
                   work_dir: str | Path, command: str | None = None) -> dict:
    """Run parts 1–3 on the first ``num_images`` images of ``data_root`` (threshold from ``tune_root``,
    default the seed-1 demo split): detector score over ``score_transforms`` (default: the equivariance
    defense's own), the ``scores`` compared, ``corruptions`` at ``severity``, PGD and the adaptive attack
    (one per λ_e of ``lambdas``) with ``attack_steps`` steps. Writes ``work_dir/roc_curves.png`` and
    ``work_dir/detect_results.{md,json,csv}`` and returns the JSON's content (AUROC, threshold, flagged,
    slipped through, per-image scores, grid rows).

    Raises:
        SettingsError: an unknown corruption or score, a severity outside 1–5, a missing rotation head (when
            ``rotation`` is compared), ``num_images`` < 2 or ``attack_steps`` < 1 — before anything runs.
    """
    corruptions, score_kinds, lambdas = list(corruptions), list(scores), list(lambdas)
    score_transforms = list(score_transforms) if score_transforms else None
    rotation_head = str(rotation_head)
    check_settings(num_images=num_images, attack_steps=attack_steps, corruptions=corruptions, severity=severity,
                   score_kinds=score_kinds, rotation_head=rotation_head)
    # The detector alone: threshold −1 flags nothing, so it only scores (its cost, its scores).
    detector = dict(type="detect_then_defend", threshold=-1.0, score_transforms=score_transforms)
    out = Path(work_dir)
    if Path(data_root) == DATA:
        ensure_data()
    from ..mmseg.evaluation import corrupted_loading

    logger.info("part 1/2: %s scores of %d clean, PGD and corrupted images (%d corruptions)", ", ".join(score_kinds),
                num_images, len(corruptions))
    val = build_demo_runner(Path(data_root), num_images, out / "val")
    pgd = dict(PGD, steps=attack_steps)
    conditions = {"clean": scores_of(val, None, score_kinds, detector, rotation_head),
                  f"PGD-{attack_steps}": scores_of(val, pgd, score_kinds, detector, rotation_head)}
    for name in corruptions:
        with corrupted_loading(val, dict(corruption=name, severity=severity)):
            conditions[name] = scores_of(val, None, score_kinds, detector, rotation_head)
    auroc = auroc_part(conditions, score_kinds, num_images)

    logger.info("part 2/2: threshold on the tuning split, then detect-then-defend under PGD and the adaptive attack")
    threshold = tuning_threshold(detector, num_images, clean_percentile, out / "tune", tune_root)
    grid, flagged = detect_then_defend_part(val, detector, threshold, pgd, attack_steps, lambdas)
    slip = {a: 1.0 - share for a, share in flagged.items() if a != "clean"}

    result = dict(num_images=num_images, severity=severity, score_transforms=score_transforms,
                  score_kinds=score_kinds, corruptions=corruptions, clean_percentile=clean_percentile, auroc=auroc,
                  threshold=threshold, flagged=flagged, slipped_through=slip,
                  scores={c: {k: v.tolist() for k, v in s.items()} for c, s in conditions.items()},
                  grid=[{k: v for k, v in r.items() if k != "per_image"} for r in grid])
    csv_rows = [dict(condition=c, score=k, auroc=v) for c, d in auroc.items() for k, v in d.items()]
    REPORT.write(out, "detect_results", result, csv_rows, command)
    return result
