"""tools/install.sh refuses to start a doomed mmcv source build without a usable wheelhouse."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_install(tmp_path, wheelhouse):
    env = {k: v for k, v in os.environ.items() if k != "EQUI_WHEELHOUSE"}
    env["EQUI_VENV"] = str(tmp_path / "venv")  # must never be created in these cases
    if wheelhouse is not None:
        env["EQUI_WHEELHOUSE"] = str(wheelhouse)
    return subprocess.run(["bash", str(REPO / "tools/install.sh")], env=env, capture_output=True, text=True,
                          timeout=60)


def test_missing_wheelhouse_variable_stops_with_directions(tmp_path):
    result = run_install(tmp_path, None)
    assert result.returncode == 2
    assert "EQUI_WHEELHOUSE is not set" in result.stderr and "tools/build_wheels.sh" in result.stderr
    assert not (tmp_path / "venv").exists()


def test_wheelhouse_without_the_wheels_stops_with_directions(tmp_path):
    empty = tmp_path / "wheels"
    empty.mkdir()
    result = run_install(tmp_path, empty)
    assert result.returncode == 2
    assert "no mmcv-2.1.0 wheel" in result.stderr
    assert not (tmp_path / "venv").exists()
    missing = run_install(tmp_path, tmp_path / "nope")
    assert missing.returncode == 2 and "is not a folder" in missing.stderr
