"""The ensemble on a real local Ray cluster: Tune over seeds, analysis, loading, predict, backtest."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "model_config_cpu_smoke.yaml"
pytestmark = pytest.mark.slow
SEEDS = [42, 123]


@pytest.fixture(scope="module")
def experiment(ray_cluster, tmp_path_factory):
    from ray_jobs import ensemble

    storage = tmp_path_factory.mktemp("ens")
    args = ensemble.parse_args([
        "--config", str(SMOKE), "--seeds", *map(str, SEEDS), "--storage", str(storage), "--name", "tiny",
        "--set", "training.max_epochs=4", "--set", "training.patience=1",
    ])
    return ensemble.run(args)


def _trial_metrics(experiment: Path) -> dict[int, pd.DataFrame]:
    from ray_jobs.analyze import trial_frames

    return trial_frames(experiment)


def test_every_trial_reports_and_stops_on_its_own(experiment):
    frames = _trial_metrics(experiment)
    assert sorted(frames) == SEEDS
    for seed, df in frames.items():
        sharpe = df["val_sharpe"].to_numpy()
        assert list(df["epoch"]) == list(range(1, len(df) + 1))
        # Patience 1 on the seed's own series: it stops at its first epoch without a new best.
        best = np.maximum.accumulate(sharpe)
        no_gain = [e for e in range(1, len(sharpe)) if sharpe[e] <= best[e - 1]]
        expected = no_gain[0] + 1 if no_gain else 4
        assert len(df) == expected, (seed, sharpe)
        info = json.loads((experiment / "seeds" / f"seed_{seed}" / "finished.json").read_text())
        assert info["epochs_run"] == expected


def test_analysis_agrees_with_trial_metrics(experiment, tmp_path):
    from ray_jobs.analyze import analyze

    table = analyze(experiment, tmp_path)
    for name in ("seeds.csv", "seeds.md", "curves.png"):
        assert (tmp_path / name).stat().st_size > 0
    saved = pd.read_csv(tmp_path / "seeds.csv")
    for seed, df in _trial_metrics(experiment).items():
        row = saved[saved["seed"] == seed].iloc[0]
        assert row["best_val_sharpe"] == pytest.approx(df["val_sharpe"].max(), abs=1e-9)
        assert row["best_epoch"] == int(df.loc[df["val_sharpe"].idxmax(), "epoch"])
        assert row["epochs_run"] == df["epoch"].max()
        assert Path(row["best_checkpoint"]).exists()
    assert list(table["seed"]) == SEEDS


def test_ensemble_weights_follow_the_combination_rule(experiment):
    """Mean mu and mean Sigma of the members, solved once: checked against cvxpy with full Sigma."""
    from portfolio.cvx import solve_full_cov
    from ray_jobs.inference import EnsembleInputs

    inputs = EnsembleInputs.load(experiment, None, "cpu")
    ens = inputs.ensemble
    assert ens.seeds == SEEDS
    idx = inputs.split_rebalances("test")[:3]
    x = inputs.windows(idx)
    weights = ens.weights(x, rule="moments").numpy()
    assert np.allclose(weights.sum(axis=1), 1.0, atol=1e-8)
    assert (weights >= -1e-8).all() and (weights <= ens.cfg.portfolio.max_weight + 1e-8).all()
    moments = ens.member_moments(x)
    n = ens.cfg.data.num_factors
    prev = np.full(n, 1.0 / n)
    for i in range(len(idx)):
        mu = np.mean([m[0][i].numpy() for m in moments.values()], axis=0)
        sigma = np.mean([(m[1][i] @ m[1][i].T + torch.diag(m[2][i])).numpy() for m in moments.values()], axis=0)
        ref = solve_full_cov(mu, sigma, prev, ens.cfg.portfolio)
        np.testing.assert_allclose(weights[i], ref, atol=1e-5)
        prev = weights[i]


def test_default_ensemble_holds_the_mean_of_the_members_portfolios(experiment):
    """ensemble.combine = weights: the mean of each member's own chained solves, each checked
    against cvxpy on that member's own mu and Sigma; the mean stays feasible."""
    from portfolio.cvx import solve_full_cov
    from ray_jobs.inference import EnsembleInputs

    inputs = EnsembleInputs.load(experiment, None, "cpu")
    ens = inputs.ensemble
    assert ens.cfg.ensemble.combine == "weights"
    idx = inputs.split_rebalances("test")[:3]
    x = inputs.windows(idx)
    weights = ens.weights(x).numpy()  # (3, N)
    n, pf = ens.cfg.data.num_factors, ens.cfg.portfolio
    members = []
    for mu, cov_factor, cov_diag in ens.member_moments(x).values():
        prev, rows = np.full(n, 1.0 / n), []
        for i in range(len(idx)):
            sigma = (cov_factor[i] @ cov_factor[i].T + torch.diag(cov_diag[i])).numpy()
            prev = solve_full_cov(mu[i].numpy(), sigma, prev, pf)
            rows.append(prev)
        members.append(np.stack(rows))
    np.testing.assert_allclose(weights, np.mean(members, axis=0), atol=1e-5)
    assert np.allclose(weights.sum(axis=1), 1.0, atol=1e-8)
    assert (weights >= -1e-8).all() and (weights <= pf.max_weight + 1e-8).all()
    assert not np.allclose(weights, ens.weights(x, rule="moments").numpy(), atol=1e-4)  # the rules differ


def test_predict_writes_weights_that_sum_to_one(experiment, tmp_path):
    from ray_jobs.predict import main

    out = tmp_path / "w.parquet"
    assert main(["--experiment", str(experiment), "--split", "test", "--out", str(out)]) == 0
    frame = pd.read_parquet(out)
    assert list(frame.columns) == ["date", "factor", "weight"]
    sums = frame.groupby("date")["weight"].sum()
    assert len(sums) > 10 and np.allclose(sums, 1.0, atol=1e-8)
    assert main(["--experiment", str(experiment), "--split", "test", "--out", str(out)]) == 2  # no overwrite
    one = tmp_path / "one.parquet"
    assert main(["--experiment", str(experiment), "--date", "2024-06-28", "--out", str(one)]) == 0
    frame = pd.read_parquet(one)
    assert frame["date"].nunique() == 1 and math.isclose(frame["weight"].sum(), 1.0, abs_tol=1e-8)


def test_backtest_report(experiment, tmp_path):
    from ray_jobs.backtest import main

    assert main(["--experiment", str(experiment), "--out", str(tmp_path)]) == 0
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    policies = set(metrics["policy"])
    assert policies == {"ensemble", "seed 42", "seed 123", "probe", "1/N", "inverse volatility", "min variance",
                        "sample mean-variance", "risk parity", "HRP"}
    assert list(metrics.columns) == ["policy", "annual_return", "annual_volatility", "sharpe", "sharpe_se", "sortino",
                                     "max_drawdown", "calmar", "cvar_95", "turnover", "sharpe_vs_1n", "p_value_vs_1n",
                                     "break_even_cost", "sharpe_0bp", "sharpe_5bp", "sharpe_10bp", "sharpe_20bp"]
    assert (metrics["sharpe_se"] > 0).all()
    assert (tmp_path / "equity.png").stat().st_size > 0
    report = (tmp_path / "report.md").read_text()
    assert "ensemble" in report and "long_only (max weight 0.1)" in report and "leverage" not in report
    one_over_n = metrics.set_index("policy").loc["1/N"]
    assert one_over_n["turnover"] == pytest.approx(0.0, abs=1e-12)  # 1/N never trades after the start
    assert (metrics["max_drawdown"] >= 0).all()
