"""The layers of pyproject.toml's import-linter contracts hold, and the check catches a violation."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")
PACKAGES = ("core", "portfolio", "model", "data", "ray_jobs", "benchmarks")


def lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT), "--no-cache", "--no-logo"], cwd=root, env={"PYTHONPATH": str(root)},
                          capture_output=True, text=True, timeout=120)


def test_the_project_keeps_its_layers():
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "broken" not in result.stdout.split("Contracts:")[-1].replace("0 broken", "")


@pytest.mark.parametrize(
    "planted, into, expected",
    [
        ("import data.scoring", "model/heads.py", "model.heads -> data.scoring"),
        ("import model.heads", "data/scoring.py", "data.scoring -> model.heads"),
        ("import model.network", "core/errors.py", "core.errors -> model.network"),
        ("import ray_jobs.ensemble", "model/losses.py", "model.losses -> ray_jobs.ensemble"),
        ("import ray", "model/encoder.py", "model.encoder -> ray"),
        ("import data.oracle", "portfolio/cvx.py", "portfolio.cvx -> data.oracle"),
        ("import ray", "portfolio/layer.py", "portfolio.layer -> ray"),
    ],
)
def test_a_planted_violation_is_caught(tmp_path, planted, into, expected):
    for name in PACKAGES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    with open(tmp_path / into, "a") as fh:
        fh.write(f"\n{planted}  # planted by the test\n")
    result = lint(tmp_path)
    assert result.returncode != 0
    assert expected in result.stdout, result.stdout
