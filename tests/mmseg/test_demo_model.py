"""The committed demo model, attacked and defended through MMSeg's test loop and IoUMetric.

A fixed subset of the val split and PGD-10 keep this to about a minute; the full table comes
from ``tools/run_demo.py`` (README). Thresholds are the paper's shape of results (the defense
recovers a large share of the loss, more than invariance, and restores the score), each bound
leaving the spread the defended cells show across CPUs.
"""

from __future__ import annotations

import pytest
from mmengine.config import Config
from mmengine.runner import Runner

from equi_ext.mmseg.evaluation import evaluate_grid

from .conftest import DEMO_CHECKPOINT, DEMO_CONFIG

pytestmark = pytest.mark.numerics  # thresholds on attacked / defended numbers

NUM_IMAGES = 12


@pytest.fixture(scope="module")
def grid(synthetic_val_root, tmp_path_factory):
    cfg = Config.fromfile(str(DEMO_CONFIG))
    cfg.work_dir = str(tmp_path_factory.mktemp("demo_grid"))
    cfg.test_dataloader.dataset.data_root = str(synthetic_val_root)
    cfg.test_dataloader.dataset.indices = NUM_IMAGES
    cfg.test_dataloader.num_workers = 0
    cfg.test_dataloader.persistent_workers = False
    cfg.default_hooks.pop("visualization")
    runner = Runner.from_cfg(cfg)
    runner.load_checkpoint(str(DEMO_CHECKPOINT), map_location="cpu", strict=True)
    rows = evaluate_grid(
        runner,
        defenses={"vanilla": None, "invariance": dict(type="invariance"), "equi": dict(type="equi"),
                  "fast": dict(type="equi", preset="fast")},
        attacks={"clean": None, "pgd": dict(type="pgd", eps=4, steps=10)},
    )
    for r in rows:
        print(f"demo grid: {r['attack']:>5} {r['defense']:>10}  mIoU {r['mIoU']:.2f}  score {r['score']:.3f}")
    return {(r["attack"], r["defense"]): r for r in rows}


def test_demo_model_is_accurate_and_pgd_breaks_it(grid):
    assert grid[("clean", "vanilla")]["mIoU"] >= 70
    assert grid[("clean", "vanilla")]["mIoU"] - grid[("pgd", "vanilla")]["mIoU"] >= 30


def test_equivariance_defense_recovers_two_fifths_of_the_loss_and_beats_invariance(grid):
    """The shipped ``default`` recovers 50-52% of the points PGD-10 takes on these images (AVX-512, AVX2 and
    default kernels, 1 and 2 threads); defended cells move by up to 4.7 points across kernel sets
    (docs/benchmarks/demo.md and its history), about 8% of the loss, so the bound is 40%: invariance recovers
    about 22%, a defense that does nothing 0."""
    clean, attacked = grid[("clean", "vanilla")]["mIoU"], grid[("pgd", "vanilla")]["mIoU"]
    defended = grid[("pgd", "equi")]["mIoU"]
    assert defended - attacked >= 0.4 * (clean - attacked)
    assert defended > grid[("pgd", "invariance")]["mIoU"]


def test_attack_lowers_and_defense_restores_the_equivariance_score(grid):
    clean, attacked = grid[("clean", "vanilla")]["score"], grid[("pgd", "vanilla")]["score"]
    assert attacked < clean - 0.1
    assert grid[("pgd", "equi")]["score"] > attacked + 0.1


def test_fast_preset_restores_the_score_and_mIoU_like_the_default(grid):
    attacked = grid[("pgd", "vanilla")]
    assert grid[("pgd", "fast")]["score"] > attacked["score"] + 0.1
    recovered = {name: grid[("pgd", name)]["mIoU"] - attacked["mIoU"] for name in ("fast", "equi")}
    assert recovered["fast"] >= 0.8 * recovered["equi"], recovered
