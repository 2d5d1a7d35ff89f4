"""The walk-forward fold plan: tiling, purge, expanding / rolling windows, refusals; no look-ahead
through the data a fold's workers prepare (normaliser and windows) when later returns change."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from core.errors import ConfigError, DataError
from data.build_panel import compute_features
from data.folds import folds_for, walk_forward_folds
from data.panel import write_panel
from data.splits import make_splits, rebalance_indices
from data.windows import prepare
from panel_helpers import small_cfg

ARGS = dict(n_dates=1500, lookback=20, horizon=5, train_fraction=0.5, val_fraction=0.1, purge_days=5)


@pytest.mark.parametrize("n_folds", [1, 2, 3, 7])
@pytest.mark.parametrize("window", ["expanding", "rolling"])
def test_trading_spans_tile_the_out_of_sample_period(n_folds, window):
    plan = walk_forward_folds(**ARGS, n_folds=n_folds, window=window)
    tests = [f.test for f in plan.folds]
    assert np.array_equal(np.concatenate(tests), plan.oos)  # no gap, no overlap, in order
    assert np.array_equal(np.diff(plan.oos), np.ones(len(plan.oos) - 1))
    # the folds' rebalances are the whole period's: one schedule, whichever fold trades it
    joined = np.concatenate([plan.rebalances(j) for j in range(n_folds)])
    assert np.array_equal(joined, rebalance_indices(plan.oos, 5))
    assert all(len(plan.rebalances(j)) >= 2 for j in range(n_folds))
    # the period is the single split's test span
    assert np.array_equal(plan.oos, make_splits(1500, 20, 5, 0.5, 0.1, 5).test)
    assert plan.oos[-1] + 5 == 1500 - 1


@pytest.mark.parametrize("window", ["expanding", "rolling"])
def test_each_fold_is_purged_and_trains_before_it_trades(window):
    plan = walk_forward_folds(**ARGS, n_folds=4, window=window)
    first = make_splits(1500, 20, 5, 0.5, 0.1, 5)
    for j, fold in enumerate(plan.folds):
        assert fold.train[-1] + 5 < fold.val[0]  # every train label day before the first val decision
        assert fold.val[-1] + 5 < fold.test[0]
        assert len(fold.val) == len(first.val)
        if window == "expanding":
            assert fold.train[0] == 19
        else:
            assert len(fold.train) == len(first.train)
        if j:  # later folds see more recent data, never less
            assert fold.train[-1] > plan.folds[j - 1].train[-1]
    assert np.array_equal(plan.folds[0].train, first.train) and np.array_equal(plan.folds[0].val, first.val)


def test_refusals_name_the_value_and_the_fix():
    with pytest.raises(ConfigError, match="--folds 0"):
        walk_forward_folds(**ARGS, n_folds=0)
    with pytest.raises(ConfigError, match="--window 'sliding'.*expanding"):
        walk_forward_folds(**ARGS, n_folds=2, window="sliding")
    with pytest.raises(DataError, match="fewer --folds"):
        walk_forward_folds(**ARGS, n_folds=200)
    with pytest.raises(ConfigError, match="purge_days = 2"):
        walk_forward_folds(**{**ARGS, "purge_days": 2}, n_folds=2)


def _perturbed_after(returns_wide: pd.DataFrame, cut_date) -> pd.DataFrame:
    noisy = returns_wide.copy()
    later = noisy.index > pd.Timestamp(cut_date)
    noisy.loc[later] = -2.0 * noisy.loc[later] + 0.01
    return noisy


def test_changing_returns_after_a_cut_leaves_the_earlier_folds_data_bitwise_unchanged(tmp_path, returns_wide,
                                                                                      panel_file):
    """What a fold's workers prepare (normaliser; train / val windows and labels; trading-span inputs)
    is the same bit for bit when every return after a later fold's first trading date changes.
    The model's weights are a function of exactly these, so they cannot change either."""
    cfg = small_cfg("data.train_fraction=0.4", "data.val_fraction=0.1")
    original = prepare(cfg, str(panel_file))
    plan = folds_for(len(original.panel.dates), cfg.data, 3)
    cut = int(plan.folds[2].test[0])
    other = tmp_path / "perturbed.parquet"
    write_panel(compute_features(_perturbed_after(returns_wide, original.panel.dates[cut])), other)
    for j, fold in enumerate(plan.folds):
        a, b = prepare(cfg, str(panel_file), splits=fold), prepare(cfg, str(other), splits=fold)
        assert np.array_equal(a.normalizer.mean, b.normalizer.mean) and np.array_equal(a.normalizer.std, b.normalizer.std)
        src_a, src_b = a.window_source(), b.window_source()
        for span in (fold.train, fold.val):
            for x, y in zip(src_a.gather(torch.tensor(span)), src_b.gather(torch.tensor(span))):
                assert torch.equal(x, y), f"fold {j}: training data changed"
        x_a, x_b = (s.gather(torch.tensor(plan.rebalances(j)))[0] for s in (src_a, src_b))
        if j < 2:
            assert torch.equal(x_a, x_b), f"fold {j}: trading-span inputs changed"
        else:  # the perturbation reaches the fold that trades after the cut: the check can fail
            assert not torch.equal(x_a, x_b)


def test_folds_for_reads_the_data_config():
    data_cfg = small_cfg().data
    plan = folds_for(900, data_cfg, 2)
    assert len(plan) == 2 and plan.horizon == data_cfg.prediction_horizon
