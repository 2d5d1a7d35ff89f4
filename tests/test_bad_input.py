"""Bad input end to end: ``train.py`` and the ensemble refuse it with one ``error: ...`` line.

For every panel of the catalogue (``tests/bad_panels.py``), and for bad config values given with
``--set``, each training entry point exits with status 2 and one line naming the problem, before
any Ray cluster starts, and leaves the output folder, which already holds a previous run's files,
byte for byte as it was.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from bad_panels import BAD_CASES, PREPARE_CASES, write_parquet
from data import prepare
from data.build_panel import compute_features
from entry_points import entry_main
from core.errors import DataError
from panel_helpers import SMALL_OVERRIDES, SMOKE, make_returns, small_cfg

MISSING_FILE = ("missing_file", None, r"panel file '.*absent\.parquet' does not exist")
CASES = [*BAD_CASES, *PREPARE_CASES, MISSING_FILE]

PREVIOUS_RUN = {  # what earlier runs left in the output folder (train.py's and the ensemble's layouts)
    "seed_7/finished.json": b'{"best_val_sharpe": 0.5, "best_epoch": 3}',
    "seed_42/checkpoint_000001/checkpoint.pt": bytes(range(256)) * 16,
    "seed_42/progress.csv": b"epoch,val_sharpe\n1,0.1\n",
    "old/experiment_state-2024-01-01_00-00-00.json": b'{"trials": []}',
    "old/seeds/seed_42/checkpoint_000000/checkpoint.pt": bytes(range(255, -1, -1)) * 16,
}


def _snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` with the sha256 of its bytes ("dir" for folders)."""
    return {
        str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
    }


def _unavailable_device() -> list[str]:
    import torch

    if not torch.backends.mps.is_available():
        return ["training.device=mps"]
    return ["training.device=cuda", "resources.gpus_per_worker=1"]  # a Mac: MPS yes, CUDA no


# (case id, --set overrides on the small smoke config, the key the message must name)
BAD_OVERRIDES = [
    ("unknown_key", ["training.lerning_rate=0.1"], "unknown key 'training.lerning_rate'"),
    ("zero_learning_rate", ["training.learning_rate=0"], "training.learning_rate = 0"),
    ("unknown_precision", ["training.precision=float16"], "training.precision = 'float16'"),
    ("infeasible_max_weight", ["portfolio.max_weight=0.1"], "portfolio.max_weight = 0.1"),  # 0.1 x 6 factors < 1
    ("unavailable_device", _unavailable_device(), "training.device = "),
]


def _runs(panel: Path, out: Path, overrides=()) -> dict[str, tuple[str, list[str]]]:
    sets = [a for o in (*SMALL_OVERRIDES, *overrides) for a in ("--set", o)]
    common = ["--config", str(SMOKE), "--data", str(panel), *sets]
    return {
        "train.py": ("train", [*common, "--output", str(out), "--seed", "42"]),
        "ensemble, new experiment": ("ray_jobs.ensemble", [*common, "--storage", str(out), "--name", "new"]),
        "ensemble --resume": ("ray_jobs.ensemble", [*common, "--storage", str(out), "--name", "old", "--resume"]),
    }


@pytest.fixture(scope="module")
def good_panel():
    return compute_features(make_returns())


@pytest.fixture
def no_ray(monkeypatch):
    """Fail the test if anything tries to start or join a Ray cluster."""
    import ray

    import ray_jobs.ray_cluster

    def refuse(*args, **kwargs):
        raise AssertionError("a Ray cluster was started for a malformed panel")

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray_jobs.ray_cluster, "ray_session", refuse)
    monkeypatch.setattr(ray, "init", refuse)
    yield
    assert not ray.is_initialized()


def _previous_run(out: Path) -> dict[str, str]:
    for rel, content in PREVIOUS_RUN.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(content)
    return _snapshot(out)


def _assert_refused(runs: dict, pattern: str, out: Path, capsys) -> None:
    before = _previous_run(out)
    for label, (entry, argv) in runs.items():
        status = entry_main(entry)(argv)
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert status == 2, f"{label}: exit status {status}, stderr {err!r}"
        assert len(lines) == 1 and lines[0].startswith("error: "), f"{label}: stderr is not one error line: {err!r}"
        assert re.search(pattern, lines[0]), f"{label}: {lines[0]!r} does not match {pattern!r}"
        assert _snapshot(out) == before, f"{label}: the output folder changed"


@pytest.mark.parametrize("case, mutate, pattern", CASES, ids=[c[0] for c in CASES])
def test_bad_panel_is_refused_end_to_end(tmp_path, good_panel, no_ray, capsys, case, mutate, pattern):
    panel = tmp_path / ("absent.parquet" if mutate is None else f"{case}.parquet")
    if mutate is not None:
        write_parquet(mutate(good_panel.copy()), panel)
    with pytest.raises(DataError, match=pattern):  # the error class, from the function both entries call
        prepare(small_cfg(), str(panel))
    _assert_refused(_runs(panel, tmp_path / "out"), pattern, tmp_path / "out", capsys)


@pytest.mark.parametrize("case, overrides, named", BAD_OVERRIDES, ids=[c[0] for c in BAD_OVERRIDES])
def test_bad_config_is_refused_end_to_end(tmp_path, good_panel, no_ray, capsys, case, overrides, named):
    panel = tmp_path / "good.parquet"
    write_parquet(good_panel, panel)  # a good panel: only the config is wrong
    _assert_refused(_runs(panel, tmp_path / "out", overrides), re.escape(named), tmp_path / "out", capsys)
