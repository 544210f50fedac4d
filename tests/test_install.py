"""tools/install.sh: where each compiled part comes from (wheelhouse, cache or a build from PyPI's sdists).

The builds themselves (mmcv about 14 min) are not run here: ``--dry-run`` stops after the plan.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY_TAG = f"cp{sys.version_info[0]}{sys.version_info[1]}"


def pinned(name):
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line.startswith(f"{name}=="):
            return line.split("==")[1]
    raise AssertionError(f"{name} is not pinned in constraints.txt")


def run_install(tmp_path, *args, wheelhouse=None):
    env = {k: v for k, v in os.environ.items() if k != "EQUI_WHEELHOUSE"}
    env.update(EQUI_VENV=str(tmp_path / "venv"), EQUI_CACHE=str(tmp_path / "cache"), PYTHON=sys.executable)
    if wheelhouse is not None:
        env["EQUI_WHEELHOUSE"] = str(wheelhouse)
    return subprocess.run(["bash", str(REPO / "tools/install.sh"), *args], env=env, capture_output=True, text=True,
                          timeout=60)


def cache_dir(tmp_path):
    return tmp_path / "cache" / "wheels" / f"torch-{pinned('torch')}"


def test_without_a_wheelhouse_the_plan_builds_both_from_pypi_sdists(tmp_path):
    result = run_install(tmp_path, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert f"mmcv {pinned('mmcv')} (ops): from a build from mmcv's PyPI sdist" in result.stdout
    assert f"from a build from PyPI's pb1-detectron2=={pinned('pb1-detectron2')} sdist" in result.stdout
    assert "dry run: nothing created or built" in result.stdout
    assert not (tmp_path / "venv").exists() and not (tmp_path / "cache").exists()


def test_wheelhouse_and_cache_are_used_before_any_build(tmp_path):
    wheelhouse = tmp_path / "wheels"
    wheelhouse.mkdir()
    (wheelhouse / f"mmcv-{pinned('mmcv')}-{PY_TAG}-{PY_TAG}-linux_x86_64.whl").touch()
    result = run_install(tmp_path, "--dry-run", wheelhouse=wheelhouse)
    assert result.returncode == 0, result.stderr
    assert f"(ops): from the wheelhouse {wheelhouse}" in result.stdout

    cache = cache_dir(tmp_path)
    cache.mkdir(parents=True)
    (cache / f"mmcv-{pinned('mmcv')}-{PY_TAG}-{PY_TAG}-linux_x86_64.whl").touch()
    (cache / f"pb1_detectron2-{pinned('pb1-detectron2')}-py3-none-any.whl").touch()
    result = run_install(tmp_path, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(f"from the cache {cache} (built earlier)") == 2
    assert not (tmp_path / "venv").exists()


def test_a_wrong_wheelhouse_or_argument_stops_with_directions(tmp_path):
    empty = tmp_path / "wheels"
    empty.mkdir()
    (empty / f"mmcv-{pinned('mmcv')}-cp39-cp39-linux_x86_64.whl").touch()  # another Python's wheel
    result = run_install(tmp_path, wheelhouse=empty)
    assert result.returncode == 2
    assert f"has no mmcv-{pinned('mmcv')} wheel for {PY_TAG}" in result.stderr and "unset it" in result.stderr
    missing = run_install(tmp_path, wheelhouse=tmp_path / "nope")
    assert missing.returncode == 2 and "is not a folder" in missing.stderr
    unknown = run_install(tmp_path, "--fast")
    assert unknown.returncode == 2 and "unknown argument --fast" in unknown.stderr
    assert not (tmp_path / "venv").exists()


def test_constraints_pin_what_the_install_uses():
    text = (REPO / "constraints.txt").read_text()
    for name in ("torch", "torchvision", "mmcv", "mmengine", "mmsegmentation", "pb1-detectron2", "numpy"):
        assert pinned(name)
    assert "-e " not in text and "equi-ext" not in text  # the project itself is not a constraint


def run_ci_plan(tmp_path, shared_wheels: bool, **env_overrides):
    """``.ci/run --dry-run`` from a copy of the repository's install files, beside a ``shared/wheels`` folder
    with an mmcv wheel or without one (a fresh clone anywhere else)."""
    import shutil

    clone = tmp_path / "clone"
    (clone / ".ci").mkdir(parents=True)
    (clone / "tools").mkdir()
    for name in (".ci/run", "tools/install.sh", "constraints.txt"):
        shutil.copy(REPO / name, clone / name)
    if shared_wheels:
        (tmp_path / "shared/wheels").mkdir(parents=True)
        (tmp_path / f"shared/wheels/mmcv-{pinned('mmcv')}-{PY_TAG}-{PY_TAG}-linux_x86_64.whl").touch()
    env = {k: v for k, v in os.environ.items() if k != "EQUI_WHEELHOUSE"}
    env.update(EQUI_VENV=str(tmp_path / "venv"), EQUI_CACHE=str(tmp_path / "cache"), PYTHON=sys.executable,
               **env_overrides)
    return subprocess.run(["bash", str(clone / ".ci/run"), "--dry-run"], env=env, capture_output=True, text=True,
                          timeout=60)


def test_ci_builds_mmcv_unless_a_wheelhouse_is_given_or_beside_the_clone(tmp_path):
    """A contributor's clone anywhere runs CI: no wheelhouse set and none beside it → mmcv built from its sdist;
    the folder beside the clone or EQUI_WHEELHOUSE → its wheel; EQUI_WHEELHOUSE naming no folder → stopped with
    a message naming it."""
    alone = run_ci_plan(tmp_path / "a", shared_wheels=False)
    assert alone.returncode == 0, alone.stderr
    assert "from a build from mmcv's PyPI sdist" in alone.stdout
    beside = run_ci_plan(tmp_path / "b", shared_wheels=True)
    assert beside.returncode == 0, beside.stderr
    assert f"from the wheelhouse {tmp_path / 'b/shared/wheels'}" in beside.stdout
    missing = run_ci_plan(tmp_path / "c", shared_wheels=True, EQUI_WHEELHOUSE=str(tmp_path / "nope"))
    assert missing.returncode == 2 and f"EQUI_WHEELHOUSE={tmp_path / 'nope'} is not a folder" in missing.stderr
    assert not any((tmp_path / d / "venv").exists() for d in "abc")
