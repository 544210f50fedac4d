"""Attack/corruption detection scores through MMSeg (test_cfg.score), ImageCorruption, and
equi_ext.evaluation.detection (tools/detect_attacks.py)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from equi_ext.evaluation.demo import build_demo_runner

from .conftest import load_tool


def _scores(runner, score, attack=None):
    from equi_ext.mmseg.evaluation import evaluate_grid

    (row,) = evaluate_grid(runner, {"none": None}, {"x": attack}, settings=dict(score=score))
    return np.array(row["image_scores"])


@pytest.mark.numerics
def test_scores_flag_pgd_images(synthetic_val_root, tmp_path):
    """Each score kind separates PGD-10 images from clean ones on the demo model (the equivariance
    score as the issue requires: AUROC ≥ 0.9, scikit-learn); corrupted loading: tests/mmseg/test_corruption.py."""
    from sklearn.metrics import roc_auc_score

    runner = build_demo_runner(synthetic_val_root, 6, tmp_path / "val")
    pgd = dict(type="pgd", eps=4, steps=10)
    labels = np.r_[np.zeros(6), np.ones(6)]
    for score, sign in (("equivariance", -1), ("output_variance", 1), ("invariance", -1)):
        clean, attacked = _scores(runner, score), _scores(runner, score, pgd)
        auroc = roc_auc_score(labels, sign * np.r_[clean, attacked])
        assert auroc >= (0.9 if score == "equivariance" else 0.6), (score, auroc)



def test_bad_score_names_fail_at_build():
    from equi_ext.pipeline import EquiPipeline

    with pytest.raises(ValueError, match="score must be"):
        EquiPipeline(score=3)
    with pytest.raises(KeyError, match="magic"):
        EquiPipeline(score="magic")
    with pytest.raises(ValueError, match="needs dense logits"):
        EquiPipeline(score="output_variance", needs_logits=False)


def test_detect_attacks_reports_auroc_roc_png_and_slip_through(synthetic_val_root, tmp_path, assert_rerenders):
    tool = load_tool("detect_attacks")
    result = tool.main(["--num-images", "2", "--corruptions", "fog,glass_blur", "--scores",
                        "equivariance,output_variance", "--lambdas", "1", "--attack-steps", "1", "--score-transforms",
                        "hflip", "--data-root", str(synthetic_val_root), "--tune-root", str(synthetic_val_root),
                        "--work-dir", str(tmp_path)])
    assert set(result["auroc"]) == {"PGD-1", "fog", "glass_blur"}
    assert all(0 <= v <= 1 for d in result["auroc"].values() for v in d.values())
    assert set(result["slipped_through"]) == {"PGD-1", "adaptive λ_e=1"}
    with Image.open(tmp_path / "roc_curves.png") as png:
        assert png.format == "PNG" and png.size[0] > 300
    assert "AUROC" in (tmp_path / "detect_results.md").read_text()
    assert (tmp_path / "detect_results.csv").read_text().count("\n") == 1 + 3 * 2
    assert_rerenders(tool, tmp_path / "detect_results.json", plots=["roc_curves.png"])


@pytest.mark.parametrize("args, message", [
    (["--scores", "equivariance,magic"], "unknown score 'magic'; valid names: equivariance"),
    (["--corruptions", "fog,rain"], "unknown corruption(s) ['rain']; valid names: gaussian_noise"),
    (["--severity", "6"], "severities must be among 1, 2, 3, 4, 5; got [6]"),
    (["--corruptions", "fog,fog"], "each corruption once, please"),
    (["--scores", "rotation", "--rotation-head", "nope.pth"], "the rotation score needs its head nope.pth"),
    (["--num-images", "1"], "num_images must be >= 2 and attack_steps >= 1"),
])
def test_detect_tool_refuses_bad_arguments_before_running(args, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_tool("detect_attacks").main([*args, "--work-dir", str(tmp_path)])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
