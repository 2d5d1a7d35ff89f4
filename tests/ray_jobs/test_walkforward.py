"""Walk-forward on a real local Ray cluster, smoke config, 2 folds x 2 seeds: a trial killed in
mid-epoch fails the run loudly; ``--resume`` finishes it with every (fold, seed) trained once; each
fold trains before it trades; the joined out-of-sample series is backtested with its report."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.errors import TrainingError
from model.checkpoint import load_checkpoint
from ray_jobs.run_folder import read_history

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "model_config_cpu_smoke.yaml"
pytestmark = pytest.mark.slow
# One run (with its resume) serves every test of the module.  Trials run one at a time (each
# seed's worker + its Ray Data CPU fill the 2-CPU cluster) and each costs a Ray Train start-up
# (~21 s at load 5-6): 2 folds x 2 seeds + the killed trial's resume = 5 starts (3 folds: 7).
FOLDS, SEEDS, EPOCHS = 2, (42, 123), 2
# An epoch of 6 steps (~2.5 s here) still leaves the killer time to find the live worker after
# epoch 1 is logged, before the trial ends.
STEPS = 6
# A short val span (5 % of the decisions instead of 15 %) makes each epoch's validation 3x cheaper;
# the out-of-sample period stays 15 % of the panel.
DATA = ["data.train_fraction=0.8", "data.val_fraction=0.05"]
KILLED = (1, 123)  # (fold, seed)


def _args(storage: Path, *extra: str):
    from ray_jobs.walkforward import parse_args

    return parse_args([
        "--config", str(SMOKE), "--folds", str(FOLDS), "--seeds", *map(str, SEEDS), "--storage", str(storage),
        "--name", "wf", *(a for kv in DATA for a in ("--set", kv)), "--set", f"training.max_epochs={EPOCHS}", "--set", f"training.steps_per_epoch={STEPS}",
        "--set", "training.patience=5", "--set", "ensemble.max_concurrent=1", "--set", "ensemble.max_failures=0",
        "--baselines", "inverse-volatility",  # one besides 1/N: the optimised ones are tested in tests/data
        *extra,
    ])


def _kill_when_epoch_logged(run_dir: Path, seen: dict, address: str, timeout: float = 400.0) -> None:
    """SIGKILL the live training worker once ``run_dir`` has logged epoch 1 (its trial then fails)."""
    from ray.util.state import list_actors

    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if read_history(run_dir):
            break
        time.sleep(0.05)
    else:
        seen["error"] = "epoch 1 never finished"
        return
    workers = list_actors(address=address, filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
    seen["workers"] = [w.pid for w in workers]
    for w in workers:
        os.kill(w.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def walk_forward(ray_cluster, tmp_path_factory):
    from ray_jobs.walkforward import run

    storage = tmp_path_factory.mktemp("wf")
    seen: dict = {}
    killed_dir = storage / "wf" / f"fold_{KILLED[0]}" / f"seed_{KILLED[1]}"
    killer = threading.Thread(target=_kill_when_epoch_logged, args=(killed_dir, seen, ray_cluster), daemon=True)
    killer.start()
    with pytest.raises(TrainingError, match=r"(?s)1 walk-forward trial\(s\) failed \(\[\(1, 123\)\] as \(fold, seed\)\)"
                                            r".*--resume") as failure:
        run(_args(storage))
    killer.join(timeout=5)
    assert "error" not in seen and len(seen["workers"]) == 1, seen
    assert not (storage / "wf" / "report").exists()  # no fold is scored without all its seeds
    experiment = run(_args(storage, "--resume"))
    return experiment, str(failure.value)


def test_resume_finishes_every_fold_and_seed_exactly_once(walk_forward):
    from ray.tune import ExperimentAnalysis

    experiment, _ = walk_forward
    trials = [(int(c["fold"]), int(c["seed"])) for c in ExperimentAnalysis(str(experiment)).get_all_configs().values()]
    assert sorted(trials) == sorted((f, s) for f in range(FOLDS) for s in SEEDS)  # one trial each, no repeat
    for fold in range(FOLDS):
        for seed in SEEDS:
            run_dir = experiment / f"fold_{fold}" / f"seed_{seed}"
            assert [r["epoch"] for r in read_history(run_dir)] == list(range(1, EPOCHS + 1))  # each epoch once
            assert json.loads((run_dir / "finished.json").read_text())["epochs_run"] == EPOCHS


def test_each_fold_trains_before_it_trades_and_the_spans_tile(walk_forward):
    from core.config import load_config
    from data.folds import folds_for
    from data.splits import rebalance_indices
    from data.windows import load_panel

    experiment, _ = walk_forward
    cfg = load_config(SMOKE, DATA)
    plan = folds_for(len(load_panel(cfg.data).dates), cfg.data, FOLDS)
    h = cfg.data.prediction_horizon
    for j, fold in enumerate(plan.folds):
        for seed in SEEDS:
            payload = load_checkpoint(experiment / f"fold_{j}" / f"seed_{seed}" / "best.pt")
            assert payload["normalizer"]["fit_end"] == fold.train[-1]  # the fold's own training span
        assert fold.train[-1] + h < fold.val[0] and fold.val[-1] + h < fold.test[0]
    folds = pd.read_csv(experiment / "report" / "folds.csv")
    assert folds["rebalances"].sum() == len(rebalance_indices(plan.oos, h))
    assert list(folds["rebalances"]) == [len(plan.rebalances(j)) for j in range(FOLDS)]
    assert (pd.to_datetime(folds["trade_start"]).iloc[1:].values > pd.to_datetime(folds["trade_end"]).iloc[:-1].values).all()
    assert (pd.to_datetime(folds["train_end"]) < pd.to_datetime(folds["trade_start"])).all()


def test_report_has_every_policy_figure_and_plot(walk_forward):
    experiment, _ = walk_forward
    report = experiment / "report"
    table = pd.read_csv(report / "metrics.csv").set_index("policy")
    expected = {"ensemble", *(f"seed {s}" for s in SEEDS), "1/N", "inverse volatility", "members mean", "members std"}
    assert set(table.index) == expected
    for column in ("annual_return", "annual_volatility", "sharpe", "sharpe_se", "sortino", "max_drawdown",
                   "calmar", "cvar_95", "turnover", "sharpe_vs_1n", "p_value_vs_1n", "break_even_cost",
                   "sharpe_0bp", "sharpe_5bp", "sharpe_10bp", "sharpe_20bp"):
        assert column in table.columns
    assert 0.0 <= table.loc["ensemble", "p_value_vs_1n"] <= 1.0
    members = table.loc[[f"seed {s}" for s in SEEDS], "sharpe"]
    assert table.loc["members mean", "sharpe"] == pytest.approx(members.mean(), rel=1e-9)
    assert np.isfinite(pd.read_csv(report / "folds.csv")["ic_mean"]).all()
    text = (report / "report.md").read_text()
    assert "members (mean ± std)" in text
    for png in ("equity", "drawdown", "rolling_sharpe", "weights"):
        assert (report / f"{png}.png").stat().st_size > 10_000 and f"({png}.png)" in text


def test_resume_on_another_panel_is_refused_before_anything_runs(walk_forward, tmp_path):
    """The plan record names the panel (path and fingerprint): folds trained on one panel are
    never finished, and scored, on another."""
    from core.config import load_config
    from core.errors import ConfigError
    from data.build_panel import compute_features
    from data.panel import write_panel
    from data.windows import load_panel
    from ray_jobs.walkforward import PLAN_FILE, plan_run

    experiment, _ = walk_forward
    panel = load_panel(load_config(SMOKE).data)  # what the run trained on: the embedded panel
    other = tmp_path / "other.parquet"
    write_panel(compute_features(pd.DataFrame(panel.returns, index=pd.DatetimeIndex(panel.dates), columns=list(panel.factors))), other)
    plan = (experiment / PLAN_FILE).read_bytes()
    with pytest.raises(ConfigError, match=r"(?s)'panel': '.*other\.parquet'.*'panel': None.*same .*panel \(--data\)"):
        plan_run(_args(experiment.parent, "--resume", "--data", str(other)))
    assert (experiment / PLAN_FILE).read_bytes() == plan
