"""Benchmark cells of the demo Mask R-CNN: per-image records, --resume, the pooled worst case,
and the benchmark / honesty tools run end to end with ``--detectron2``."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
from detectron2.modeling import build_model

from equi_ext.data.synthetic import generate_dataset
from equi_ext.detectron2 import load_config, register_synthetic_shapes
from equi_ext.detectron2.evaluation import (
    PerImageCOCOEvaluator,
    evaluate_cell,
    evaluate_scenarios,
    load_weights,
    worst_case,
)
from equi_ext.pipeline import CONFIGURED_RUN, active_run

from .conftest import DEMO_EQUI_YAML, DEMO_WEIGHTS, REPO

NUM_IMAGES = 4
PGD = dict(type="pgd", eps=4.0, steps=2)
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("d2_cells") / "shapes"
    generate_dataset(root, seed=0, image_size=128, num_train=0, num_val=NUM_IMAGES)
    return root


@pytest.fixture(scope="module")
def demo(shapes_root):
    (name,) = register_synthetic_shapes(shapes_root, prefix="equi_d2_cells_test")
    cfg = load_config(DEMO_EQUI_YAML, ["EQUI.SYNTHETIC_ROOT", "", "DATASETS.TEST", f"('{name}',)"])
    model = build_model(cfg).eval()
    load_weights(model, str(DEMO_WEIGHTS))
    return cfg, model


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(f"equi_tools_d2_{name}", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.numerics
def test_cell_records_resume_and_worst_case(demo, tmp_path):
    cfg, model = demo
    pipeline = model.pipeline
    clean = evaluate_cell(cfg, model, ("clean", None), ("vanilla", None), tmp_path / "clean")
    (reference,) = evaluate_scenarios(cfg, None, scenarios=["clean"], output_dir=str(tmp_path / "ref"), model=model)
    assert clean["segm_AP"] == pytest.approx(reference["segm_AP"], abs=1e-9)  # COCOEvaluator's number
    assert model.pipeline is pipeline and active_run(model) is CONFIGURED_RUN
    assert clean["images"] == clean["run_images"] == NUM_IMAGES
    for record in clean["per_image"]:
        assert 0.0 <= record["mask_ap"] <= 100.0 and math.isfinite(record["loss"]) and record["loss"] > 0

    # The pooled AP the worst-case search minimises is the evaluator's AP.
    evaluator = PerImageCOCOEvaluator(cfg.DATASETS.TEST[0], tasks=("bbox", "segm"), distributed=False)
    assert evaluator.pooled_ap(clean["per_image"], "segm") == pytest.approx(clean["segm_AP"], abs=1e-9)

    attacked_dir = tmp_path / "pgd"
    pgd = evaluate_cell(cfg, model, ("PGD-2", PGD), ("vanilla", None), attacked_dir)
    assert pgd["segm_AP"] < clean["segm_AP"] - 5.0
    kept = {p.name: p.read_text() for p in sorted(attacked_dir.glob("*.json"))}
    assert len(kept) == NUM_IMAGES
    for path in sorted(attacked_dir.glob("*.json"))[:2]:
        path.unlink()
    resumed = evaluate_cell(cfg, model, ("PGD-2", PGD), ("vanilla", None), attacked_dir, resume=True)
    assert resumed["run_images"] == 2
    assert resumed["segm_AP"] == pytest.approx(pgd["segm_AP"], abs=1e-9)
    assert {p.name: json.loads(p.read_text()) for p in attacked_dir.glob("*.json")} == \
        {name: json.loads(text) for name, text in kept.items()}  # seeds are per image

    assert worst_case(cfg, [pgd])["segm_AP"] == pytest.approx(pgd["segm_AP"], abs=1e-9)
    worst = worst_case(cfg, [clean, pgd])
    assert worst["segm_AP"] <= pgd["segm_AP"] + 1e-9
    assert set(worst["picks"]) <= {"clean / vanilla", "PGD-2 / vanilla"} and len(worst["picks"]) == NUM_IMAGES


def test_benchmark_and_honesty_tools_on_the_mask_rcnn(shapes_root, tmp_path, assert_rerenders):
    """The tools' --detectron2 mode: mask AP rows, logit-only attacks named as not applicable,
    a worst case never above the strongest run, and the seven honesty checks (APGD on the task loss, no SEA)."""
    data = ["--data-root", str(shapes_root), "--num-images", "1"]
    bench = load_tool("benchmark_robustness").main([
        *data, "--detectron2", "--seeds", "0", "--defenses", "vanilla,random", "--attacks", "clean,pgd,cw",
        "--steps", "1", "--work-dir", str(tmp_path / "bench")])
    assert bench["framework"] == "detectron2" and bench["metric"] == "segm_AP"
    assert bench["not_applicable"] == ["CW-1"]
    assert set(bench["table"]) == {"clean", "PGD-1", "worst case (per image)"}
    for column in ("vanilla", "random"):
        assert bench["table"]["worst case (per image)"][column][0] <= bench["table"]["PGD-1"][column][0] + 1e-9
    assert "Not applicable to this model (they need dense logits): CW-1." in (tmp_path / "bench/robustness.md").read_text()

    report = load_tool("sanity_checks").main([
        *data, "--detectron2", "--steps", "1", "--bpda-steps", "1", "--max-bpda-steps", "1", "--restarts", "1",
        "--lambdas", "1", "--eot-samples", "1", "--work-dir", str(tmp_path / "sanity")])
    assert report["framework"] == "detectron2"
    assert [c["check"] for c in report["checks"]] == list("abcdefg")
    assert [s for s, _ in report["apgd_curve"]] == [1] and not any(label.startswith("SEA") for label in report["runs"])
    assert report["worst_case"] <= report["strongest_single"] + 1e-9
    assert "mask AP" in (tmp_path / "sanity/sanity_checks.md").read_text()
    assert_rerenders(load_tool("sanity_checks"), tmp_path / "sanity/sanity_checks.json")


def test_standard_evaluation_on_the_mask_rcnn(shapes_root, tmp_path, capsys):
    """``tools/standard_evaluation.py --detectron2``: APGD on the training losses replaces SEA (no dense
    logits), every part runs through Detectron2's COCOEvaluator, the worst case is never above a run."""
    result = load_tool("standard_evaluation").main([
        "--detectron2", "--data-root", str(shapes_root), "--num-images", "1", "--steps", "1", "--eot-samples", "1",
        "--max-doublings", "0", "--epsilons", "0,4", "--work-dir", str(tmp_path)])
    assert result["metric"] == "segm_AP"
    assert set(result["attacks"]) == {"clean", "APGD-1 (undefended model)", "APGD-1 transfer", "APGD-1-BPDA",
                                      "EOT-APGD-1-BPDA ×1", "PGD-1", "BPDA-PGD-1", "adaptive-1 λ_e=1"}
    defended = [row["defended"] for label, row in result["attacks"].items() if label != "clean" and "defended" in row]
    assert result["worst_case"]["defended"]["quoted"] <= min(defended) + 1e-9
    assert result["security_curve"][0]["defended"] == result["attacks"]["clean"]["defended"]
    assert "mask AP" in (tmp_path / "standard_evaluation.md").read_text()
    assert "APGD-1-BPDA / defended: 100%" in capsys.readouterr().err  # Detectron2's loop shows progress too


def test_a_failing_cell_or_scenario_leaves_the_model_as_it_was(demo, tmp_path, monkeypatch):
    """An error mid-evaluation (here: the evaluation loop itself) ends the evaluation's run, so the next
    evaluation with the same model is not silently run in a stale scenario."""
    import equi_ext.detectron2.evaluation as evaluation

    cfg, model = demo
    pipeline = model.pipeline

    def broken(*args, **kwargs):
        assert active_run(model).scenario is not None  # the scenario was in force while the loop ran
        raise RuntimeError("interrupted")

    monkeypatch.setattr(evaluation, "inference_on_dataset", broken)
    with pytest.raises(RuntimeError, match="interrupted"):
        evaluate_cell(cfg, model, ("PGD-2", PGD), ("equivariance", dict(type="equi", steps=1)), tmp_path / "cell")
    assert model.pipeline is pipeline and active_run(model) is CONFIGURED_RUN
    with pytest.raises(RuntimeError, match="interrupted"):
        evaluate_scenarios(cfg, None, scenarios=["defended"], output_dir=str(tmp_path / "s"), model=model)
    assert model.pipeline is pipeline and active_run(model) is CONFIGURED_RUN


def test_evaluation_sets_no_attribute_on_the_model(demo, tmp_path, attribute_writes):
    """What a cell or a scenario evaluates travels in its run (``EquiRun``), not on the model; putting the model
    in eval mode is the one attribute an evaluation may set."""
    cfg, model = demo
    written = attribute_writes(model)
    evaluate_cell(cfg, model, ("PGD-1", dict(type="pgd", steps=1)), ("equivariance", dict(type="equi", steps=1)),
                  tmp_path / "cell", num_images=1, record_scores=True)
    evaluate_scenarios(cfg, None, scenarios=["clean_defended"], num_images=1, output_dir=str(tmp_path / "s"),
                       model=model)
    assert set(written) <= {"training"}
    assert active_run(model) is CONFIGURED_RUN


def test_cell_records_do_not_depend_on_where_the_run_writes():
    """A cell's settings stamp leaves ``OUTPUT_DIR`` out (it does not change a number), so the cells of several
    work dirs can be merged and resumed; any setting that can change a number still changes the stamp."""
    from equi_ext.detectron2.evaluation import config_fingerprint

    first = load_config(DEMO_EQUI_YAML, ["OUTPUT_DIR", "work_dirs/a/runs"])
    moved = load_config(DEMO_EQUI_YAML, ["OUTPUT_DIR", "/elsewhere/b/runs"])
    other = load_config(DEMO_EQUI_YAML, ["OUTPUT_DIR", "work_dirs/a/runs", "EQUI.EPS_V", "5.0"])
    assert config_fingerprint(first) == config_fingerprint(moved) != config_fingerprint(other)
    assert first.OUTPUT_DIR == "work_dirs/a/runs"  # the config itself is left as it was
