"""The committed demo Mask R-CNN under attack, on a fixed subset of the synthetic val split.

Issue targets: PGD lowers mask AP by ≥ 10 points and the defense recovers ≥ 25% of the loss;
BPDA through the defense is measured next to it (an attack that knows the defense).
"""

from __future__ import annotations

import pytest
from detectron2.modeling import build_model

from equi_ext.data.synthetic import generate_dataset
from equi_ext.detectron2 import load_config, register_synthetic_shapes
from equi_ext.detectron2.evaluation import evaluate_scenarios, load_weights

from .conftest import DEMO_EQUI_YAML, DEMO_WEIGHTS

NUM_IMAGES = 8
pytestmark = [pytest.mark.numerics,  # thresholds on attacked / defended numbers
              pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")]


@pytest.fixture(scope="module")
def demo_val(tmp_path_factory) -> str:
    """The seed-0 val split that data/synthetic_shapes holds, registered under its own name."""
    root = tmp_path_factory.mktemp("demo_d2") / "shapes"
    generate_dataset(root, seed=0, image_size=128, num_train=0, num_val=NUM_IMAGES)
    (name,) = register_synthetic_shapes(root, prefix="equi_d2_demo_test")
    return name


def _evaluate(dataset: str, tmp_path, *opts: str, scenarios: list[str]) -> dict[str, dict]:
    cfg = load_config(DEMO_EQUI_YAML, ["EQUI.SYNTHETIC_ROOT", "", "DATASETS.TEST", f"('{dataset}',)", *opts])
    model = build_model(cfg)
    load_weights(model, str(DEMO_WEIGHTS))
    rows = evaluate_scenarios(cfg, None, scenarios=scenarios, output_dir=str(tmp_path), model=model)
    return {r["scenario"]: r for r in rows}


def test_pgd_hurts_and_the_defense_recovers(demo_val, tmp_path):
    rows = _evaluate(demo_val, tmp_path, scenarios=["clean", "attacked", "defended"])
    clean, attacked, defended = (rows[s]["segm_AP"] for s in ("clean", "attacked", "defended"))
    print(f"mask AP clean {clean:.2f} / PGD-10 {attacked:.2f} / defended {defended:.2f}")
    assert clean >= 30.0
    assert clean - attacked >= 10.0
    assert defended - attacked >= 0.25 * (clean - attacked)
    assert rows["defended"]["equivariance_score"] > rows["attacked"]["equivariance_score"]


def test_bpda_through_the_defense_is_reported(demo_val, tmp_path):
    rows = _evaluate(demo_val, tmp_path, "EQUI.ATTACK", "bpda", "EQUI.STEPS", "3", scenarios=["clean", "defended"])
    clean, bpda = rows["clean"]["segm_AP"], rows["defended"]["segm_AP"]
    print(f"mask AP clean {clean:.2f} / BPDA-3 through the defense {bpda:.2f}")
    assert bpda < clean - 5.0  # BPDA is a real attack on the defended model, not a no-op
