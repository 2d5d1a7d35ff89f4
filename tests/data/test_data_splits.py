"""Splits: valid decisions only, purged by >= horizon, sizes from the fractions, loud when too short."""

from __future__ import annotations

import numpy as np
import pytest

from data.splits import block_dates, block_starts, make_splits, min_panel_dates, rebalance_indices
from core.errors import ConfigError, DataError

CASES = [  # n_dates, lookback, horizon, train_fraction, val_fraction, purge_days
    (6264, 20, 5, 0.70, 0.15, 5),
    (6264, 250, 5, 0.70, 0.15, 5),
    (2000, 60, 5, 0.60, 0.20, 12),
    (300, 10, 3, 0.70, 0.15, 3),
    (101, 7, 1, 0.50, 0.25, 1),
]


@pytest.mark.parametrize("n_dates, lookback, horizon, train_f, val_f, purge", CASES)
def test_split_rules(n_dates, lookback, horizon, train_f, val_f, purge):
    s = make_splits(n_dates, lookback, horizon, train_f, val_f, purge)
    for name, idx in s.items():
        assert idx.dtype == np.int64 and len(idx) >= horizon + 1, name
        assert (np.diff(idx) == 1).all(), name  # increasing, contiguous in time
        assert idx[0] >= lookback - 1 and idx[-1] + horizon <= n_dates - 1, name  # full window and labels
    for a, b in [(s.train, s.val), (s.val, s.test)]:
        labels_a = (a[:, None] + np.arange(1, horizon + 1)).ravel()
        labels_b = (b[:, None] + np.arange(1, horizon + 1)).ravel()
        assert labels_a.max() < labels_b.min()  # every label day of a precedes every label day of b
        assert a[-1] + horizon < b[0]  # ... and precedes b's first decision date
        assert b[0] - a[-1] - 1 == purge  # exactly purge_days decision dates dropped
    n_avail = (n_dates - lookback - horizon + 1) - 2 * purge
    assert len(s.train) + len(s.val) + len(s.test) == n_avail
    assert len(s.train) == int(np.floor(train_f * n_avail)) and len(s.val) == int(np.floor(val_f * n_avail))
    assert s.test[-1] == n_dates - 1 - horizon  # the last valid decision is used


def test_minimum_length_is_exact():
    args = (20, 5, 0.7, 0.15, 5)
    need = min_panel_dates(*args)
    make_splits(need, *args)
    with pytest.raises(DataError, match=rf"too few dates: {need - 1} dates .*at least {need} dates"):
        make_splits(need - 1, *args)


def test_purge_shorter_than_horizon_is_refused():
    with pytest.raises(ConfigError, match=r"purge_days = 4 is shorter than prediction_horizon = 5"):
        make_splits(1000, 20, 5, 0.7, 0.15, 4)


def test_rebalances_do_not_overlap():
    s = make_splits(6264, 20, 5, 0.7, 0.15, 5)
    reb = rebalance_indices(s.val, 5)
    assert (np.diff(reb) == 5).all() and reb[0] == s.val[0] and reb[-1] <= s.val[-1]


@pytest.mark.parametrize("size, horizon", [(64, 5), (32, 5), (2, 1), (7, 3)])
def test_blocks_are_consecutive_rebalance_dates_inside_the_split(size, horizon):
    train = np.arange(59, 59 + 700, dtype=np.int64)  # a training split's decision indices
    starts = block_starts(train, size, horizon)
    # Reference: every position whose block of `size` dates, `horizon` apart, stays in the split.
    fits = [p for p in range(len(train)) if p + (size - 1) * horizon < len(train)]
    assert starts.tolist() == fits
    for p in (starts[0], starts[len(starts) // 2], starts[-1]):
        block = block_dates(train, int(p), size, horizon)
        assert block.tolist() == [int(train[p]) + horizon * i for i in range(size)]
    assert block_dates(train, int(starts[-1]), size, horizon)[-1] == train[-1]  # the last block ends the split
    with pytest.raises(ValueError, match="only"):
        block_dates(train, int(starts[-1]) + 1, size, horizon)


def test_a_split_shorter_than_one_block_is_refused():
    train = np.arange(100, 100 + 315, dtype=np.int64)  # 64 dates 5 apart span 316 decisions
    with pytest.raises(ConfigError, match=r"batch_dates = 'blocks'.*spans 316 decision dates.*holds 315.*at most 63,"):
        block_starts(train, 64, 5)
    assert len(block_starts(train, 63, 5)) == 315 - 62 * 5  # the largest block the message names fits
    assert len(block_starts(np.arange(316, dtype=np.int64), 64, 5)) == 1
