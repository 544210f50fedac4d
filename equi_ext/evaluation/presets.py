"""Do the defense's presets hold on models they were not tuned on?

A preset is applied to the user's own model, so it is measured on several: ``ZOO`` holds MMSeg segmenters of
different architecture and resolution, each trained by ``tools/train.py`` on the synthetic benchmark at its own
image size (configs under ``configs/zoo``), and Mask R-CNNs of different backbone depth trained by
``tools/train_net.py``. Settings are chosen on the ``tuned`` models; a ``held back`` model is reported as
measured, never tuned on. ``compare_presets`` runs, on the first N images of each model's tuning split (seed 1,
never the reported split), models of one framework per run (mIoU and mask AP do not mix):

- vanilla: clean and each attack of the run (default: the framework's ``DEFAULT_ATTACKS``; on no defense,
  BPDA-10 is PGD-10, SEA-10-BPDA is SEA-10 and APGD-10-BPDA is APGD-10); the per-image worst case over them;
- each setting: clean + defense, PGD-20 made on the undefended model (transfer) + defense, BPDA-10 (PGD) and
  SEA-10-BPDA (SEA, 10 APGD iterations per loss; a Mask R-CNN, without dense logits, gets APGD-10 on its
  training losses instead) through the defense, and the per-image worst case over those attacks (MMSeg: the
  lower of AutoAttack's per-image pick and the greedy search, ``equi_ext.mmseg.evaluation.worst_case``;
  Detectron2: the greedy search over COCO AP, ``equi_ext.detectron2.evaluation.worst_case``);
- the recovered share ``(worst − vanilla worst) / (vanilla clean − vanilla worst)``;
- the cost: seconds per image of the whole defended prediction over the stock prediction of the same
  batches, at batch 1 and batch B, the two alternating (``speed.alternating_predictions``,
  ``speed.alternating_detectron2_predictions``).

Cells keep per-image records, so an interrupted run continues with ``resume``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..assets import ASSETS, WORKSPACE
from ..cells import Cell
from ..core.defense import PRESETS
from ..core.validation import SettingsError
from ..files import atomic_write_text
from ..reporting import Report, slug
from .backends import BACKENDS
from .demo import CHECKPOINT, CONFIG, D2_CHECKPOINT, EPS, ensure_tune_data
from .tuning import CANDIDATES

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ZooModel:
    """A model the presets are measured on: its config (MMSeg ``.py`` or Detectron2 ``.yaml``, as ``framework``
    says) and weights, the image size it was trained at, and whether settings may be chosen on it (``tuned``)
    or it is only reported (``held back``)."""

    title: str
    config: Path
    checkpoint: Path
    image_size: int
    role: str
    framework: str = "mmseg"

    def tune_data(self) -> Path:
        """The model's tuning split: 100 images of seed 1 at its image size, generated once."""
        if self.image_size == 128:  # the demo's
            return ensure_tune_data()
        root = WORKSPACE / f"data/synthetic_shapes_{self.image_size}_tune"
        if not (root / "meta.json").is_file():
            from ..data.synthetic import generate_dataset

            logger.info("generating the %d-px tuning split (seed 1) into %s", self.image_size, root)
            generate_dataset(root, seed=1, image_size=self.image_size, num_train=0, num_val=100)
        return root


ZOO = {
    "deeplabv3-128": ZooModel("demo DeepLabV3 R18c16-D8, 128 px", CONFIG, CHECKPOINT, 128, "tuned"),
    "unet-64": ZooModel("UNet-FCN s4-c16, 64 px", ASSETS / "configs/zoo/fcn_unet-s4-c16_1xb8-4k_synthetic-64x64.py",
                        ASSETS / "checkpoints/zoo/fcn_unet-s4-c16_synthetic-64x64.pth", 64, "tuned"),
    "fast-scnn-256": ZooModel("Fast-SCNN, 256 px", ASSETS / "configs/zoo/fast-scnn_1xb8-2k_synthetic-256x256.py",
                              ASSETS / "checkpoints/zoo/fast-scnn_synthetic-256x256.pth", 256, "held back"),
    "mask-rcnn-r18-128": ZooModel("demo Mask R-CNN R18-FPN, 128 px",
                                  ASSETS / "configs/demo/mask_rcnn_R18_FPN_synthetic-128x128.yaml", D2_CHECKPOINT,
                                  128, "tuned", "detectron2"),
    "mask-rcnn-r34-128": ZooModel("Mask R-CNN R34-FPN, 128 px",
                                  ASSETS / "configs/zoo/mask_rcnn_R34_FPN_synthetic-128x128.yaml",
                                  ASSETS / "checkpoints/zoo/mask_rcnn_R34_FPN_synthetic-128x128.pth", 128,
                                  "held back", "detectron2"),
}
#: What ``compare_presets`` runs when no models are named: the segmenters.
SEGMENTERS = tuple(name for name, model in ZOO.items() if model.framework == "mmseg")
#: Defense settings that can be compared: the shipped presets, the T = 20 reference the ``fast`` preset is held to,
#: and every named tuning candidate (the search for the presets runs over these).
#: ``fpn_levels`` (Detectron2 only) names the FPN maps the defense reads; without it, every backbone output.
#: ``d2-demo`` is the ``mask_rcnn`` preset on the three finest FPN levels: the demo Mask R-CNN config's tuned ``EQUI``
#: settings (``demo.D2_CONFIG``), which are also what a Detectron2 config gets that sets none (both tested equal).
SETTINGS = {**{name: dict(preset=name) for name in PRESETS}, "reference": CANDIDATES["fr-T20-epsv4-eta0.5"],
            **{name: setting for name, setting in CANDIDATES.items() if name not in PRESETS},
            "d2-demo": dict(preset="mask_rcnn", fpn_levels=["p2", "p3", "p4"])}
#: The presets' cost budgets (the defended prediction over the stock one at the larger batch) and the clean cost
#: a setting may have on every tuned model to be chosen.
BUDGETS = {"fast": 40.0, "default": 100.0}
MAX_CLEAN_COST = 3.0
ATTACKS = {"PGD-20": dict(type="pgd", eps=EPS, steps=20), "BPDA-10": dict(type="bpda", eps=EPS, steps=10),
           "SEA-10-BPDA": dict(type="bpda", attack=dict(type="sea", eps=EPS, steps=10)),
           "APGD-10-BPDA": dict(type="bpda", attack=dict(type="apgd", eps=EPS, steps=10))}
ATTACK_NOTES = {"PGD-20": "made on the undefended model (transfer)", "BPDA-10": "PGD-10 through the defense",
                "SEA-10-BPDA": "SEA (10 APGD iterations per loss) through the defense",
                "APGD-10-BPDA": "APGD (10 iterations; cross-entropy, or a Mask R-CNN's training losses) through "
                                "the defense"}
#: The attacks of a run that names none: SEA where the model has dense logits, APGD on the task loss where not.
DEFAULT_ATTACKS = {"mmseg": ("PGD-20", "BPDA-10", "SEA-10-BPDA"), "detectron2": ("PGD-20", "BPDA-10", "APGD-10-BPDA")}
#: Results written before SEA joined the criterion hold only these.
FIRST_ATTACKS = ("PGD-20", "BPDA-10")


def resolved(setting: dict) -> dict:
    """A setting with its preset's values written out, so a result still says what ran after a preset changes."""
    values = dict(PRESETS[setting["preset"]]) if "preset" in setting else {}
    values.update((k, v) for k, v in setting.items() if k != "preset")
    return values


def defense_of(setting: dict) -> tuple[dict, list[str] | None]:
    """The registry config of ``setting`` and the FPN levels it reads (None: the framework's default)."""
    levels = setting.get("fpn_levels")
    return dict(type="equi", **{k: v for k, v in setting.items() if k != "fpn_levels"}), levels


def setting_lines(settings: dict) -> list[str]:
    """One line per setting of a result that recorded its values (results before that name presets only)."""
    lines = [f"- `{name}`: " + ", ".join(f"{k} {v}" for k, v in values["values"].items())
             for name, values in settings.items() if "values" in values]
    return ["", "Settings as run:", *lines] if lines else []


def record_values(cell_dir: Path, values: dict) -> None:
    cell_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(cell_dir / "setting.json", json.dumps(values, sort_keys=True))


def check_recorded_values(cell_dir: Path, values: dict) -> None:
    """Refuse to resume cells measured with other values than ``values`` (e.g. a preset changed since)."""
    path = cell_dir / "setting.json"
    if path.is_file() and json.loads(path.read_text()) != json.loads(json.dumps(values)):
        raise SettingsError(f"{cell_dir} holds records of {path.read_text()}, not {json.dumps(values, sort_keys=True)}: "
                            "resume in another work dir")


def recovered_share(clean: float, worst_vanilla: float, worst_defended: float) -> float:
    """The share of what the attacks took from the undefended model that the defense gives back."""
    return (worst_defended - worst_vanilla) / (clean - worst_vanilla)


def render(data: dict) -> str:
    """The model × preset table: cost, clean, each attack, the worst case and the recovered share."""
    b = data["batch"]
    attacks = data.get("attacks", FIRST_ATTACKS)
    lines = [f"{data.get('metric', 'mIoU')} (%) on the first {data['num_images']} images of each model's tuning split (seed 1), ε = "
             f"{data['eps']:g}/255; " + "; ".join(f"{a}: {ATTACK_NOTES[a]}" for a in attacks) + "; "
             "worst = per-image worst case over the attacks; recovered = (worst − vanilla worst) / (vanilla clean − "
             f"vanilla worst); cost = seconds per image of the defended prediction over the stock one, batch 1 / "
             f"batch {b}.", "",
             f"| model | role | defense | × batch 1 | × batch {b} | clean | {' | '.join(attacks)} | worst | recovered |",
             "|---|---|---|---|---|---|" + "---|" * len(attacks) + "---|---|"]
    for r in data["rows"]:
        cost = "— | —" if r["defense"] == "vanilla" else f"{r['ratio_batch1']:.1f} | {r['ratio_batchB']:.1f}"
        recovered = "—" if r["defense"] == "vanilla" else f"{100 * r['recovered']:.0f}%"
        lines.append(f"| {r['model']} | {r['role']} | {r['defense']} | {cost} | {r['clean']:.2f} | "
                     + " | ".join(f"{r[a]:.2f}" for a in attacks) + f" | {r['worst']:.2f} | {recovered} |")
    return "\n".join(lines + criterion_lines(data["rows"], b) + setting_lines(data.get("settings", {}))) + "\n"


def criterion_lines(rows: list[dict], batch: int) -> list[str]:
    """How each setting fares against the presets' criterion over the tuned models: its lowest recovered share
    (what a preset maximises), its largest clean cost (≤ ``MAX_CLEAN_COST`` points) and largest cost at the larger
    batch; the setting each preset's budget would pick; and per model ``fast`` against the T = 20 reference
    (≥ 60% of what it recovers, ≤ 40× at the larger batch)."""
    defended = [r for r in rows if r["defense"] != "vanilla"]
    if not defended:
        return []
    clean = {r["key"]: r["clean"] for r in rows if r["defense"] == "vanilla"}
    tuned_models = {r["key"] for r in rows if r["role"] == "tuned"}
    summary = {}
    for setting in dict.fromkeys(r["defense"] for r in defended):
        tuned = [r for r in defended if r["defense"] == setting and r["role"] == "tuned"]
        if tuned:
            summary[setting] = dict(share=min(r["recovered"] for r in tuned),
                                    clean_cost=max(clean[r["key"]] - r["clean"] for r in tuned),
                                    ratio=max(r["ratio_batchB"] for r in tuned),
                                    complete={r["key"] for r in tuned} == tuned_models)
    lines = []
    if summary:
        lines += ["", f"| defense | lowest recovered, tuned models | largest clean cost, tuned models (points) | "
                      f"largest × batch {batch} |", "|---|---|---|---|"]
        lines += [f"| {setting} | {100 * s['share']:.0f}% | {s['clean_cost']:.2f} | {s['ratio']:.1f} |"
                  for setting, s in summary.items()]
        for preset, budget in BUDGETS.items():
            allowed = {k: s for k, s in summary.items()
                       if s["complete"] and s["ratio"] <= budget and s["clean_cost"] <= MAX_CLEAN_COST}
            if allowed:
                best = max(allowed, key=lambda k: allowed[k]["share"])
                lines.append(f"\nCriterion for `{preset}` (≤ {budget:g}× at batch {batch}, clean cost ≤ "
                             f"{MAX_CLEAN_COST:g} points on every tuned model): **{best}**, lowest recovered share "
                             f"{100 * allowed[best]['share']:.0f}%.")
            else:
                lines.append(f"\nCriterion for `{preset}` (≤ {budget:g}× at batch {batch}, clean cost ≤ "
                             f"{MAX_CLEAN_COST:g} points on every tuned model): no setting measured here meets it.")
    cell = {(r["key"], r["defense"]): r for r in defended}
    for key in dict.fromkeys(r["key"] for r in defended):
        fast, reference = cell.get((key, "fast")), cell.get((key, "reference"))
        if fast and reference:
            share = fast["recovered"] / reference["recovered"] if reference["recovered"] > 0 else float("nan")
            lines.append(f"\n{fast['model']} ({fast['role']}): `fast` recovers {100 * fast['recovered']:.0f}%, "
                         f"{100 * share:.0f}% of the reference's {100 * reference['recovered']:.0f}% (target ≥ 60%), "
                         f"at {fast['ratio_batchB']:.1f}× with batch {batch} (target ≤ 40×).")
    return lines


REPORT = Report(render)


def check_settings(models: Sequence[str], settings: Sequence[str], attacks: Sequence[str] | None, num_images: int,
                   batch: int, repeats: int) -> list[str]:
    """The attacks :func:`compare_presets` runs (its argument, or the framework's defaults), or a ``SettingsError``
    for anything it could not run, before it runs anything."""
    named = [("models", models, ZOO), ("settings", settings, SETTINGS)]
    for what, names, valid in named + ([("attacks", attacks, ATTACKS)] if attacks is not None else []):
        unknown = [n for n in names if n not in valid]
        if unknown or not names:
            raise SettingsError(f"unknown {what} {unknown or list(names)}; valid: {', '.join(valid)}")
    frameworks = sorted({ZOO[name].framework for name in models})
    if len(frameworks) > 1:
        raise SettingsError(f"models {list(models)} are of two frameworks ({', '.join(frameworks)}): their metrics "
                            "differ, so compare them in separate runs")
    framework = frameworks[0]
    attacks = list(DEFAULT_ATTACKS[framework] if attacks is None else attacks)
    backend = BACKENDS[framework]
    unsupported = [a for a in ATTACKS if not backend.supports(ATTACKS[a])]
    if set(attacks) & set(unsupported):
        raise SettingsError(f"attacks {[a for a in attacks if a in unsupported]} need dense logits, which a "
                            f"{backend.model_name.removeprefix('demo ')} does not have; valid here: "
                            f"{', '.join(a for a in ATTACKS if a not in unsupported)}")
    with_levels = [s for s in settings if "fpn_levels" in SETTINGS[s]]
    if with_levels and not backend.reads_levels:
        raise SettingsError(f"settings {with_levels} name FPN levels, which a {framework} model does not read")
    if num_images < 1 or batch < 1 or repeats < 1:
        raise SettingsError(f"num_images, batch and repeats must be >= 1; got {num_images}, {batch}, {repeats}")
    for name in models:
        zoo = ZOO[name]
        if not zoo.checkpoint.is_file():
            train = BACKENDS[zoo.framework].train_command
            raise SettingsError(f"model {name}: no weights at {zoo.checkpoint}; train them with `python {train} "
                                f"{zoo.config}` and `tools/export_weights.py` (docs/benchmarks/presets.md)")
    return attacks


def cost(backend, timing: dict[str, Any], defense: dict, levels: list[str] | None, repeats: int) -> dict[str, float]:
    """The defended prediction's median time over the stock one's, per entry of ``timing`` (batch 1 and batch B)."""
    ratios = {}
    for label, batches in timing.items():
        stock, defended = backend.timed(batches, defense, levels, repeats)
        ratios[label] = defended["median"] / stock["median"]
    return ratios


def model_rows(name: str, settings: Sequence[str], attacks: list[str], backend, timing: dict[str, Any], out: Path,
               repeats: int, resume: bool) -> list[dict]:
    """One model's rows: vanilla, then each setting with its worst case, the share of the damage it recovers and
    its cost (over ``timing``'s batches)."""
    zoo = ZOO[name]
    rows, vanilla = [], {}
    for column in ("vanilla", *settings):
        defense, levels = defense_of(SETTINGS[column]) if column != "vanilla" else (None, None)
        if defense is not None:
            record_values(out / slug(name) / "cells" / slug(column), resolved(SETTINGS[column]))
        with backend.reading(levels):
            cells = {attack: backend.cell(Cell(attack, cfg), Cell(column, defense),
                                                  out / slug(name) / "cells" / slug(column) / slug(attack),
                                                  resume=resume)
                     for attack, cfg in {"clean": None, **{a: ATTACKS[a] for a in attacks}}.items()}
            found = backend.worst_case([cells[a] for a in attacks])
        key = backend.key
        row = dict(model=zoo.title, key=name, role=zoo.role, defense=column,
                   worst=min(found[key], found.get(f"greedy_{key}", found[key])),
                   **{attack: cell[key] for attack, cell in cells.items()})
        if column == "vanilla":
            vanilla = row
        else:
            row["recovered"] = recovered_share(vanilla["clean"], vanilla["worst"], row["worst"])
            for label, ratio in cost(backend, timing, defense, levels, repeats).items():
                row[label] = ratio
        rows.append(row)
        logger.info("%s / %s: clean %.2f, %s, worst %.2f%s", name, column, row["clean"],
                    ", ".join(f"{a} {row[a]:.2f}" for a in attacks), row["worst"],
                    f", recovered {100 * row['recovered']:.0f}%, ×{row['ratio_batch1']:.1f} / "
                    f"×{row['ratio_batchB']:.1f}" if column != "vanilla" else "")
    return rows


def compare_presets(*, models: Sequence[str] = SEGMENTERS, settings: Sequence[str] = ("fast", "default", "reference"),
                    attacks: Sequence[str] | None = None, num_images: int = 16, batch: int = 16, repeats: int = 1,
                    work_dir: str | Path, resume: bool = False, command: str | None = None) -> dict:
    """Measure each of ``settings`` (names of ``SETTINGS``) on each of ``models`` (names of ``ZOO``, one framework)
    under ``attacks`` (names of ``ATTACKS``; default: the framework's ``DEFAULT_ATTACKS``) as the module describes;
    cost at batch 1 (over the first 4 images) and ``batch`` (its first ``batch`` images), ``repeats`` timed calls
    each after a warm-up. Writes ``work_dir/presets.{md,json,csv}`` and returns the JSON's content.

    Raises:
        SettingsError: unknown models, settings or attacks, models of two frameworks, an attack that needs dense
            logits on a Mask R-CNN, FPN levels on a segmenter, a missing checkpoint (with how to train it),
            ``num_images``, ``batch`` or ``repeats`` < 1 — before anything runs.
    """
    attacks = check_settings(models, settings, attacks, num_images, batch, repeats)
    out = Path(work_dir)
    if resume:  # a preset may change between runs: never mix its records with another setting's
        for name in models:
            for setting in settings:
                check_recorded_values(out / slug(name) / "cells" / slug(setting), resolved(SETTINGS[setting]))

    rows = []
    start = time.perf_counter()
    for name in models:
        zoo = ZOO[name]
        backend = BACKENDS[zoo.framework](zoo.tune_data(), num_images, out / slug(name), zoo.checkpoint,
                                          config=zoo.config)
        # the cost's images, loaded once per model: batch 1 over the first 4, batch B over the first B
        timing = {label: backend.timing_batches(count, size, out / slug(name) / "timing")
                  for label, size, count in (("ratio_batch1", 1, min(4, num_images)), ("ratio_batchB", batch, batch))}
        rows += model_rows(name, settings, attacks, backend, timing, out, repeats, resume)
    data = dict(num_images=num_images, batch=batch, eps=EPS, attacks=attacks, metric=backend.metric,
                settings={s: dict(SETTINGS[s], values=resolved(SETTINGS[s])) for s in settings},
                models={name: dict(title=ZOO[name].title, role=ZOO[name].role, image_size=ZOO[name].image_size,
                                   config=str(ZOO[name].config.relative_to(ASSETS))) for name in models},
                rows=rows, seconds=time.perf_counter() - start)
    REPORT.write(out, "presets", data, rows, command)
    return data
