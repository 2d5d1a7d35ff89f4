"""benchmarks/gpu_check.sh: its dry run checks every stage's command and config on CPU."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.gpu_check import main, plan

ROOT = Path(__file__).resolve().parents[1]


def test_dry_run_checks_every_stage_without_a_gpu(tmp_path):
    """Through the shell script, as CI runs it; no stage runs (no output files besides the folder)."""
    done = subprocess.run([str(ROOT / "benchmarks" / "gpu_check.sh"), str(tmp_path / "out"), "--dry-run"],
                          env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    for stage in plan(tmp_path / "out"):
        assert f"-m {stage.module} " in done.stdout
    assert "ok: python -m pytest --markers" in done.stdout
    assert "ok: python -m benchmarks.step --help" in done.stdout and "ok: python -m ray_jobs.ensemble --help" in done.stdout
    assert not any((tmp_path / "out").iterdir())


def test_the_gpu_marked_tests_exist():
    """What the first stage runs: the inductor + bf16 test and the CUDA solve, marked one by one."""
    marked = [p for p in (ROOT / "tests").rglob("test_*.py") if "@pytest.mark.gpu" in p.read_text()]
    assert {p.name for p in marked} >= {"test_compile.py", "test_layer.py"}


def test_a_bad_override_fails_the_dry_run(tmp_path, monkeypatch, capsys):
    import benchmarks.gpu_check as gpu_check

    monkeypatch.setattr(gpu_check, "SHORT_RUN", ["training.max_epoks=2"])
    assert main([str(tmp_path), "--dry-run", "--only", "one_seed"]) == 2
    assert "unknown key 'training.max_epoks'" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_a_real_run_without_a_gpu_is_refused(tmp_path, capsys):
    assert main([str(tmp_path), "--only", "gpu_tests"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
