"""``python train.py --seed N --output models/ensemble/model_N`` runs, one per seed, make an ensemble.

Real runs of train.py on the smoke config (one epoch each) on a real local Ray cluster, then
Ensemble.load, predict and backtest with ``--runs``, and the refusals: an empty pattern, a run
without best.pt, a member trained with another config.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.errors import CheckpointError, ConfigError
from entry_points import entry_main

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "model_config_cpu_smoke.yaml"
pytestmark = pytest.mark.slow
SEEDS = [1, 2]


def _train(models: Path, seed: int, *overrides: str) -> Path:
    out = models / f"model_{seed}"
    sets = [arg for value in ("training.max_epochs=1", *overrides) for arg in ("--set", value)]
    assert entry_main("train")(["--config", str(SMOKE), "--seed", str(seed), "--output", str(out), *sets]) == 0
    return out


@pytest.fixture(scope="module")
def models(ray_cluster, tmp_path_factory):
    """models/ensemble/model_<seed> as the shell loop of the README writes them."""
    models = tmp_path_factory.mktemp("ensemble")
    for seed in SEEDS:
        _train(models, seed)
    return models


def test_ensemble_loads_train_runs_from_a_pattern(models):
    from ray_jobs.ensemble_model import Ensemble

    ensemble = Ensemble.load(runs=[str(models / "model_*")])
    assert ensemble.seeds == SEEDS
    same = Ensemble.load(runs=[models / "model_1", models / "model_2" / "seed_2"])  # output or run folder
    assert same.seeds == SEEDS


def test_predict_and_backtest_take_runs(models, tmp_path):
    out = tmp_path / "w.parquet"
    assert entry_main("ray_jobs.predict")(["--runs", str(models / "model_*"), "--split", "test", "--out", str(out)]) == 0
    sums = pd.read_parquet(out).groupby("date")["weight"].sum()
    assert len(sums) > 10 and np.allclose(sums, 1.0, atol=1e-8)
    report = tmp_path / "report"
    runs = [str(models / f"model_{seed}") for seed in SEEDS]
    assert entry_main("ray_jobs.backtest")(["--runs", *runs, "--out", str(report)]) == 0
    policies = set(pd.read_csv(report / "metrics.csv")["policy"])
    assert {"ensemble", "seed 1", "seed 2"} <= policies
    assert "# Backtest of train.py runs model_1, model_2" in (report / "report.md").read_text()


def test_empty_pattern_is_a_config_error(models, capsys):
    from ray_jobs.ensemble_model import Ensemble

    with pytest.raises(ConfigError, match=r"--runs '.*/nothing_\*' matches no folder"):
        Ensemble.load(runs=[str(models / "nothing_*")])
    assert entry_main("ray_jobs.predict")(["--runs", str(models / "nothing_*"), "--split", "test",
                                           "--out", str(models / "w.parquet")]) == 2
    assert "matches no folder" in capsys.readouterr().err


def test_run_without_best_checkpoint_is_refused(models, tmp_path):
    from ray_jobs.ensemble_model import Ensemble

    broken = tmp_path / "model_3"
    shutil.copytree(models / "model_1" / "seed_1", broken / "seed_3", ignore=shutil.ignore_patterns("best.pt"))
    with pytest.raises(CheckpointError, match=r"seed_3 has no best\.pt"):
        Ensemble.load(runs=[models / "model_1", broken])
    with pytest.raises(CheckpointError, match=r"no seed_<N> run folder in it"):
        Ensemble.load(runs=[models / "model_1", tmp_path])


def test_members_with_another_config_are_refused(models):
    from ray_jobs.ensemble_model import Ensemble

    odd = _train(models.parent / f"{models.name}_odd", 3, "portfolio.tc_rate=0.001")
    with pytest.raises(ConfigError, match=r"another config .*portfolio\.tc_rate \(0\.0005 vs 0\.001\)"):
        Ensemble.load(runs=[models / "model_1", odd])


def test_a_run_on_a_panel_file_is_backtested_on_that_file_and_nothing_else(models, tmp_path, capsys):
    """``--data`` at training is what predict / backtest read by default; a changed file is refused.

    (Before, the checkpoints kept the config's ``data.panel_path`` (none), so the default panel of a
    member trained with ``--data`` was the embedded synthetic one, backtested with only a note.)"""
    from bad_panels import write_parquet
    from core.errors import DataError
    from data.build_panel import compute_features
    from panel_helpers import SMALL_OVERRIDES, make_returns
    from ray_jobs.ensemble_model import Ensemble

    panel = tmp_path / "panel.parquet"
    returns = make_returns(seed=11)
    write_parquet(compute_features(returns), panel)
    out = models.parent / f"{models.name}_file" / "model_5"
    sets = [a for o in (*SMALL_OVERRIDES, "training.max_epochs=1") for a in ("--set", o)]
    assert entry_main("train")(["--config", str(SMOKE), "--data", str(panel), "--seed", "5", "--output", str(out),
                                *sets]) == 0
    assert Ensemble.load(runs=[out]).cfg.data.panel_path == str(panel.resolve())

    weights = tmp_path / "w.parquet"
    assert entry_main("ray_jobs.predict")(["--runs", str(out), "--split", "test", "--out", str(weights)]) == 0
    frame = pd.read_parquet(weights)
    assert set(frame["factor"]) == set(returns.columns)  # the file's factors, not the synthetic panel's
    assert set(pd.to_datetime(frame["date"])) <= set(returns.index)
    assert "other than the training one" not in capsys.readouterr().out

    write_parquet(compute_features(make_returns(seed=12)), panel)  # the file changes under the members
    assert entry_main("ray_jobs.predict")(["--runs", str(out), "--split", "test", "--out", str(tmp_path / "x.parquet")]) == 2
    message = capsys.readouterr().err
    assert "fingerprint" in message and "--data" in message
    with pytest.raises(DataError, match=r"trained on a panel with fingerprint"):
        from ray_jobs.inference import EnsembleInputs
        EnsembleInputs.load(None, None, "cpu", runs=[out])
    other = tmp_path / "other.parquet"  # another panel asked for by name: allowed, with the note
    write_parquet(compute_features(make_returns(seed=13)), other)
    assert entry_main("ray_jobs.predict")(["--runs", str(out), "--split", "test", "--data", str(other),
                                           "--out", str(tmp_path / "y.parquet")]) == 0
    assert "other than the training one" in capsys.readouterr().out
