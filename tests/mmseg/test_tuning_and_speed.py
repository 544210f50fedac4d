"""equi_ext.evaluation.tuning and .speed (tools/tune_defense.py, tools/benchmark_speed.py): bad settings are
refused by name before any model is built or any file written; the tools turn them into exit messages."""

from __future__ import annotations

import pytest

from equi_ext.core.optimizer import EquivarianceDefense
from equi_ext.core.validation import SettingsError
from equi_ext.defenses import build_defense
from equi_ext.evaluation import speed, tuning

from .conftest import load_tool


@pytest.mark.parametrize("kwargs, message", [
    (dict(candidates=["paper", "T3-magic"]), r"unknown candidates \['T3-magic'\]; valid: \['paper', "),
    (dict(detectron2=True, candidates=["paper"]), r"unknown candidates \['paper'\]; valid: \['default', "),
    (dict(split="test"), "unknown split 'test'; valid: tune, val"),
    (dict(num_images=0), "num_images must be >= 1; got 0"),
    (dict(detectron2=True, split="val"), "feature_layer and split apply to the MMSeg model only"),
    (dict(detectron2=True, feature_layer="neck"), "feature_layer and split apply to the MMSeg model only"),
])
def test_tuning_refuses_bad_settings_before_running(kwargs, message, tmp_path):
    with pytest.raises(SettingsError, match=message):
        tuning.tune_defense(work_dir=tmp_path, **kwargs)
    assert not list(tmp_path.iterdir())


def test_every_tuning_candidate_is_a_valid_defense():
    assert set(tuning.DEFAULT_CANDIDATES) <= set(tuning.CANDIDATES)
    for name, settings in tuning.CANDIDATES.items():
        assert isinstance(build_defense(dict(type="equi", **settings)), EquivarianceDefense), name


@pytest.mark.parametrize("kwargs, message", [
    (dict(presets=["fast", "slow"]), r"unknown presets \['slow'\]; valid: "),
    (dict(models=["mmseg", "yolo"]), r"unknown models \['yolo'\]; valid: \['mmseg', 'detectron2'\]"),
    (dict(repeats=0), "batch, repeats and attack_steps must be >= 1; got 8, 0, 10"),
])
def test_speed_refuses_bad_settings_before_running(kwargs, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        speed.benchmark_speed(work_dir=tmp_path, **kwargs)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("tool, args, message", [
    ("tune_defense", ["--candidates", "T3-magic"], r"^error: unknown candidates \['T3-magic'\]"),
    ("tune_defense", ["--detectron2", "--candidates", "paper"], r"^error: unknown candidates \['paper'\]"),
    ("benchmark_speed", ["--presets", "slow"], r"^error: unknown presets \['slow'\]"),
    ("benchmark_speed", ["--models", "yolo"], r"^error: unknown models \['yolo'\]"),
])
def test_tools_turn_bad_settings_into_exit_messages(tool, args, message, tmp_path):
    with pytest.raises(SystemExit, match=message):
        load_tool(tool).main([*args, "--work-dir", str(tmp_path)])
    assert not list(tmp_path.iterdir())
