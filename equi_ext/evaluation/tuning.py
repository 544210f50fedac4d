"""Choose the defense's default settings by measurement on a *tuning* split.

The tuning split is generated with another seed (1) than the benchmark (0), so the settings are never
chosen on the images the README reports. Each candidate is run by MMSeg's test loop + IoUMetric on clean
and PGD-attacked images of the demo DeepLabV3; for the demo Mask R-CNN by ``COCOEvaluator`` (mask AP)
instead. ``CANDIDATES`` and ``D2_CANDIDATES`` name every setting measured so far, so a choice can be
re-measured by name (and, for MMSeg, confirmed on the reported split with ``split='val'``).
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..assets import WORKSPACE
from ..core.validation import SettingsError
from ..reporting import Report
from .backends import check_framework
from .demo import D2_CONFIG, DATA, build_demo_runner, ensure_data, ensure_tune_data

logger = logging.getLogger(__name__)

CANDIDATES = {
    "paper": dict(preset="paper"),
    "default": dict(preset="default"),
    "fast": dict(preset="fast"),
    "T20-eta12": dict(transforms="flip_resize_rotate", steps=20, eps_v=6, step_size=12, transforms_per_step="all"),
    "T20-eta1.5": dict(transforms="flip_resize_rotate", steps=20, eps_v=6, step_size=1.5, transforms_per_step="all"),
    "T8-eta1.5": dict(transforms="flip_resize_rotate", steps=8, eps_v=6, step_size=1.5, transforms_per_step="all"),
    "T4-eta3": dict(transforms="flip_resize_rotate", steps=4, eps_v=6, step_size=3, transforms_per_step="all"),
    "T8-eta1-epsv4": dict(transforms="flip_resize_rotate", steps=8, eps_v=4, step_size=1, transforms_per_step="all"),
    "T8-eta0.75-epsv3": dict(transforms="flip_resize_rotate", steps=8, eps_v=3, step_size=0.75, transforms_per_step="all"),
    "T8-eta1.5-sgd": dict(transforms="flip_resize_rotate", steps=8, eps_v=6, step_size=1.5, optimizer="sgd", transforms_per_step="all"),
    "fr-T8-epsv6": dict(transforms="flip_resize", steps=8, eps_v=6, step_size=1.5, transforms_per_step="all"),
    "fr-T8-epsv4": dict(transforms="flip_resize", steps=8, eps_v=4, step_size=1, transforms_per_step="all"),
    "fr-T4-epsv4": dict(transforms="flip_resize", steps=4, eps_v=4, step_size=2, transforms_per_step="all"),
    "frr-T8-epsv4": dict(transforms="flip_resize_rotate", steps=8, eps_v=4, step_size=1, transforms_per_step="all"),
    # Cheaper settings for the `fast` preset (docs/benchmarks/speed.md): fewer steps, fewer or smaller copies per step.
    "fr-T20-epsv4-eta0.5": dict(transforms="flip_resize", steps=20, eps_v=4, step_size=0.5, transforms_per_step="all"),  # reference
    "fr-T8-epsv4-m2": dict(transforms="flip_resize", steps=8, eps_v=4, step_size=1, transforms_per_step=2),
    "fr-T4-epsv4-eta2-m1": dict(transforms="flip_resize", steps=4, eps_v=4, step_size=2, transforms_per_step=1),
    "fr-T8-epsv4-m1": dict(transforms="flip_resize", steps=8, eps_v=4, step_size=1, transforms_per_step=1),
    "fr-T6-epsv4-eta1.33-m2": dict(transforms="flip_resize", steps=6, eps_v=4, step_size=4 / 3,
                                   transforms_per_step=2),
    "fr-T4-epsv4-m2": dict(transforms="flip_resize", steps=4, eps_v=4, step_size=2, transforms_per_step=2),
    "f3r-T4-epsv4": dict(transforms=["hflip", "resize:0.5", "resize:0.75", "resize:1.5"], steps=4, eps_v=4,
                         step_size=2, transforms_per_step="all"),
    "f3r-T6-epsv4-m2": dict(transforms=["hflip", "resize:0.5", "resize:0.75", "resize:1.5"], steps=6, eps_v=4,
                            step_size=1.5, transforms_per_step=2),
    # The search for a smaller clean cost at `fast`'s price (docs/benchmarks/presets.md): smaller radii, fewer steps.
    "fr-T4-epsv1-eta0.5-m1": dict(transforms="flip_resize", steps=4, eps_v=1, step_size=0.5, transforms_per_step=1),
    "fr-T4-epsv2-eta1-m1": dict(transforms="flip_resize", steps=4, eps_v=2, step_size=1, transforms_per_step=1),
    "fr-T4-epsv3-eta1.5-m1": dict(transforms="flip_resize", steps=4, eps_v=3, step_size=1.5, transforms_per_step=1),
    "fr-T2-epsv4-eta2-m1": dict(transforms="flip_resize", steps=2, eps_v=4, step_size=2, transforms_per_step=1),
    "fr-T4-epsv4-eta1-m1": dict(transforms="flip_resize", steps=4, eps_v=4, step_size=1, transforms_per_step=1),
    "fr-T4-epsv3-eta0.75-m1": dict(transforms="flip_resize", steps=4, eps_v=3, step_size=0.75,
                                   transforms_per_step=1),
    "fr-T8-epsv3-eta0.75-m1": dict(transforms="flip_resize", steps=8, eps_v=3, step_size=0.75,
                                   transforms_per_step=1),
    "fr-T8-epsv2-eta0.5-m1": dict(transforms="flip_resize", steps=8, eps_v=2, step_size=0.5, transforms_per_step=1),
    "fr-T8-epsv3-eta0.75-m2": dict(transforms="flip_resize", steps=8, eps_v=3, step_size=0.75,
                                   transforms_per_step=2),
}

# Detectron2 candidates, as EQUI overrides of configs/demo/mask_rcnn_R18_FPN_synthetic-128x128_equi.yaml.
FLIP_3RESIZES = "['hflip','resize:0.5','resize:0.75','resize:1.5']"
D2_CANDIDATES = {
    "default": [],
    "fr-T4-epsv4": ["EQUI.DEFENSE_STEPS", "4", "EQUI.STEP_SIZE", "2.0"],
    "f3r-T8-epsv4": ["EQUI.TRANSFORMS", FLIP_3RESIZES],
    "f3r-T4-epsv4": ["EQUI.TRANSFORMS", FLIP_3RESIZES, "EQUI.DEFENSE_STEPS", "4", "EQUI.STEP_SIZE", "2.0"],
    "f3r-T4-epsv6-eta3": ["EQUI.TRANSFORMS", FLIP_3RESIZES, "EQUI.DEFENSE_STEPS", "4", "EQUI.EPS_V", "6.0",
                          "EQUI.STEP_SIZE", "3.0"],
    "fr-T8-epsv4-masklogits": ["EQUI.FEATURE", "fpn+mask_logits"],
    "f3r-T4-epsv8-eta4": ["EQUI.TRANSFORMS", FLIP_3RESIZES, "EQUI.DEFENSE_STEPS", "4", "EQUI.EPS_V", "8.0",
                          "EQUI.STEP_SIZE", "4.0"],
    "f3r-T8-epsv6-eta1.5": ["EQUI.TRANSFORMS", FLIP_3RESIZES, "EQUI.DEFENSE_STEPS", "8", "EQUI.EPS_V", "6.0",
                            "EQUI.STEP_SIZE", "1.5"],
    "f3r-T4-epsv6-eta3-p2p4": ["EQUI.TRANSFORMS", FLIP_3RESIZES, "EQUI.DEFENSE_STEPS", "4", "EQUI.EPS_V", "6.0",
                               "EQUI.STEP_SIZE", "3.0", "EQUI.FPN_LEVELS", "['p2','p3','p4']"],
}


#: The MMSeg candidates run when none are named.
DEFAULT_CANDIDATES = ("paper", "T20-eta12", "T20-eta1.5", "T8-eta1.5", "T4-eta3")
SPLITS = ("tune", "val")


def render(data: dict) -> str:
    """The tuning page: MMSeg — mIoU and seconds per candidate, clean and under PGD-20; Detectron2 — mask AP
    per candidate, clean and under PGD-10, defended."""
    if data["framework"] == "mmseg":
        from ..mmseg.evaluation import grid_table

        split_name = "Tuning split (seed 1)" if data["split"] == "tune" else "Reported val split (seed 0)"
        return (f"{split_name}, first {data['num_images']} images, feature layer {data['feature_layer']}\n\n"
                + grid_table(data["rows"]) + "\n\nseconds per cell\n\n" + grid_table(data["rows"], "seconds", "{:.0f}")
                + "\n")
    lines = [f"Tuning split (seed 1), first {data['num_images']} images, mask AP, PGD-10 at eps 4", "",
             "| candidate | clean + defense | PGD-10 | PGD-10 + defense | seconds (defended) |", "|---|---|---|---|---|"]
    base = {r["scenario"]: r for r in data["candidates"][0]["rows"]}
    lines.append(f"| vanilla | {base['clean']['segm_AP']:.2f} | {base['attacked']['segm_AP']:.2f} | — | — |")
    for candidate in data["candidates"]:
        rows = {r["scenario"]: r for r in candidate["rows"]}
        lines.append(f"| {candidate['candidate']} | {rows['clean_defended']['segm_AP']:.2f} | "
                     f"{base['attacked']['segm_AP']:.2f} | {rows['defended']['segm_AP']:.2f} | "
                     f"{rows['defended']['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


REPORT = Report(render)


def tune_defense(*, framework: str = "mmseg", num_images: int = 16,
                 work_dir: str | Path = WORKSPACE / "work_dirs/tune", feature_layer: str | None = None,
                 candidates: list[str] | None = None, split: str | None = None, command: str | None = None) -> list[dict]:
    """Measure the named ``candidates`` on the first ``num_images`` images and write the table into
    ``work_dir``; return its rows.

    MMSeg (default): mIoU of vanilla and of each candidate of ``CANDIDATES`` (default:
    ``DEFAULT_CANDIDATES``) clean and under PGD-20, the defense reading ``feature_layer`` (default
    ``'backbone'``), on the tuning split or (``split='val'``) the reported split, to confirm a choice made on the tuning split; writes
    ``<split>_<feature_layer>_<n>cands_<num_images>img.{md,json}``. ``framework='detectron2'``: mask AP of each
    candidate of ``D2_CANDIDATES`` (default: all), always on the tuning split and with the config's own
    feature view (setting ``feature_layer`` or ``split`` is an error); writes
    ``tune_detectron2_<num_images>img.{md,json}``.

    Raises:
        SettingsError: an unknown framework, ``num_images`` < 1, an unknown split or unknown candidate names,
            ``feature_layer`` or ``split`` with Detectron2, before anything runs.
    """
    check_framework(framework)
    detectron2 = framework == "detectron2"
    if detectron2 and (feature_layer is not None or split is not None):
        raise SettingsError("feature_layer and split apply to the MMSeg model only; the Mask R-CNN candidates "
                            "set their own feature view and always run on the tuning split")
    feature_layer, split = feature_layer or "backbone", split or "tune"
    if num_images < 1:
        raise SettingsError(f"num_images must be >= 1; got {num_images}")
    if split not in SPLITS:
        raise SettingsError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    valid = D2_CANDIDATES if detectron2 else CANDIDATES
    chosen = list(candidates) if candidates else list(D2_CANDIDATES if detectron2 else DEFAULT_CANDIDATES)
    unknown = [c for c in chosen if c not in valid]
    if unknown:
        raise SettingsError(f"unknown candidates {unknown}; valid: {list(valid)}")
    if detectron2:
        return _tune_detectron2(num_images, work_dir, chosen, command)

    from ..mmseg.evaluation import evaluate_grid

    if split == "val":
        ensure_data()
    data = ensure_tune_data() if split == "tune" else DATA
    runner = build_demo_runner(data, num_images, Path(work_dir))
    defenses = {"vanilla": None, **{name: dict(type="equi", **CANDIDATES[name]) for name in chosen}}
    attacks = {"clean": None, "PGD-20": dict(type="pgd", eps=4, steps=20)}
    rows = evaluate_grid(runner, defenses, attacks, settings=dict(feature_layer=feature_layer))
    REPORT.write(work_dir, f"{split}_{feature_layer}_{len(chosen)}cands_{num_images}img",
                 dict(framework="mmseg", split=split, num_images=num_images, feature_layer=feature_layer,
                      candidates={name: CANDIDATES[name] for name in chosen}, rows=rows), command=command)
    return rows


def _tune_detectron2(num_images: int, work_dir: str | Path, chosen: list[str], command: str | None) -> list[dict]:
    """Mask AP of each candidate on the tuning split: clean + defense, PGD-10, PGD-10 + defense."""
    from ..detectron2 import load_config, register_synthetic_shapes
    from ..detectron2.evaluation import build_equi_model, evaluate_scenarios

    (dataset,) = register_synthetic_shapes(ensure_tune_data(), prefix="synthetic_shapes_tune")
    results = []
    for i, name in enumerate(chosen):
        cfg = load_config(D2_CONFIG,
                          ["EQUI.SYNTHETIC_ROOT", "", "DATASETS.TEST", f"('{dataset}',)", *D2_CANDIDATES[name]])
        model = build_equi_model(cfg, str(WORKSPACE / cfg.MODEL.WEIGHTS))
        scenarios = ["clean_defended", "defended"] if i else ["clean", "clean_defended", "attacked", "defended"]
        rows = {r["scenario"]: r for r in evaluate_scenarios(
            cfg, None, scenarios=scenarios, num_images=num_images,
            output_dir=str(Path(work_dir) / "d2" / name), model=model)}
        results.append(dict(candidate=name, opts=D2_CANDIDATES[name], rows=list(rows.values())))
    REPORT.write(work_dir, f"tune_detectron2_{num_images}img",
                 dict(framework="detectron2", num_images=num_images, candidates=results), command=command)
    return results


def render_sweep(data: dict) -> str:
    """The λ_e sweep page: mIoU and mean equivariance score per λ_e, vanilla and defended."""
    from ..mmseg.evaluation import grid_table

    return (f"Tuning split (seed 1), first {data['num_images']} images, adaptive attack with {data['steps']} steps at "
            f"ε = {data['eps']:g}; defense {data['defense']}\n\n"
            + grid_table(data["rows"]) + "\n\nmean equivariance score of the attacked (vanilla) / defended images\n\n"
            + grid_table(data["rows"], "score", "{:.3f}") + "\n")


SWEEP_REPORT = Report(render_sweep)


def sweep_adaptive_lambda(*, num_images: int = 16, lambdas: list[float], steps: int = 20,
                          work_dir: str | Path = WORKSPACE / "work_dirs/sweep_lambda",
                          command: str | None = None) -> list[dict]:
    """The adaptive attack (paper Eq. 6) at each λ_e of ``lambdas`` against the vanilla and the defended demo
    model, on the tuning split (so the λ_e that reported numbers use is not picked on them); writes
    ``work_dir/sweep_lambda.{md,json}`` and returns the rows (lower mIoU = stronger attack).

    Raises:
        SettingsError: ``num_images`` or ``steps`` < 1, or no λ_e, before anything runs.
    """
    if num_images < 1 or steps < 1 or not lambdas:
        raise SettingsError(f"need num_images >= 1, steps >= 1 and at least one λ_e; got {num_images}, {steps}, "
                            f"{lambdas}")
    from ..mmseg.evaluation import evaluate_grid

    runner = build_demo_runner(ensure_tune_data(), num_images, Path(work_dir))
    eps, defense = 4.0, dict(type="equi", preset="default")
    attacks = {f"adaptive λ_e={lam:g}": dict(type="adaptive", eps=eps, steps=steps, lambda_e=lam) for lam in lambdas}
    logger.info("adaptive attack at λ_e ∈ {%s}, %d steps, on %d tuning images", ", ".join(f"{v:g}" for v in lambdas),
                steps, num_images)
    rows = evaluate_grid(runner, {"vanilla": None, "equivariance": defense}, attacks)
    SWEEP_REPORT.write(work_dir, "sweep_lambda", dict(num_images=num_images, steps=steps, eps=eps, defense=defense,
                                                      lambdas=list(lambdas), rows=rows), command=command)
    return rows
