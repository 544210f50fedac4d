"""tools/gpu_check.sh: the steps a CUDA machine runs, checked on the CPU by its dry run."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def run_check(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, EQUI_PYTHON=sys.executable)
    return subprocess.run(["bash", "tools/gpu_check.sh", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=1800)


def test_the_dry_run_runs_every_step_on_the_cpu():
    result = run_check("--dry-run")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    steps = [line for line in result.stdout.splitlines() if line.startswith("== gpu_check (cpu): ")]
    assert [s.split()[4] for s in steps[:5]] == [
        "-c", "-m", "tools/run_demo.py", "tools/test.py", "tools/benchmark_speed.py"]
    assert steps[-1].startswith("== gpu_check (cpu): every step passed")
    assert "| Detectron2 demo Mask R-CNN (R18-FPN, 128×128) | 2 | vanilla forward |" in result.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_without_a_gpu_the_check_refuses_and_points_to_the_dry_run():
    result = run_check()
    assert result.returncode == 1 and "--dry-run" in result.stderr and "no CUDA GPU" in result.stderr
    assert run_check("--fast").returncode == 2
