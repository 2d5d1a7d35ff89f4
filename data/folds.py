"""Walk-forward folds: a pure index generator with an explicit purge (as skfolio's ``WalkForward``).

The valid decision indices (see :mod:`data.splits`) are cut as for one split: an initial train
span of ``train_fraction`` and a val span of ``val_fraction`` of the decisions left after two
purges; the rest is the **out-of-sample period**.  It is cut into ``n_folds`` consecutive trading
spans whose lengths are whole numbers of ``horizon`` (but the last), so the rebalances of the
folds, ``test[::horizon]`` each, are exactly the out-of-sample period's ``oos[::horizon]``: the
trading spans tile it with no gap and no overlap.

Fold j trades its span ``test_j``; it early-stops on the ``n_val`` decisions that end ``purge``
decisions before ``test_j`` starts, and trains on the decisions that end ``purge`` decisions before
that val span: from the first decision (``window="expanding"``) or the ``n_train`` decisions
before (``window="rolling"``).  With ``purge >= horizon``:

    last_train + horizon < first_val     and     last_val + horizon < first_test

so no label day of fold j's training or val data reaches its trading span.  Fold j's train and val
spans may hold earlier folds' trading spans: that data is in the past when fold j trades.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.errors import ConfigError, DataError
from data.splits import Splits, _check_args, _split_sizes, min_split_decisions, purge_of

WINDOWS = ("expanding", "rolling")


@dataclass(frozen=True, eq=False)
class FoldPlan:
    """The folds of a walk-forward: ``folds[j]`` is fold j's purged train / val / test (trading) span.

    Attributes
    ----------
    folds : tuple of Splits
        int64 decision indices (into ``panel.dates``), read-only.
    oos : np.ndarray, int64, (n_oos,)
        The out-of-sample period: the concatenation of the folds' ``test`` spans.
    horizon : int
    """

    folds: tuple[Splits, ...]
    oos: np.ndarray
    horizon: int

    def __len__(self) -> int:
        return len(self.folds)

    def rebalances(self, fold: int) -> np.ndarray:
        """Fold ``fold``'s non-overlapping rebalance decisions, ``test[::horizon]``."""
        return self.folds[fold].test[:: self.horizon]


def _frozen(start: int, stop: int) -> np.ndarray:
    idx = np.arange(start, stop, dtype=np.int64)
    idx.setflags(write=False)
    return idx


def _check_fold_args(n_folds: int, window: str) -> None:
    if not isinstance(n_folds, (int, np.integer)) or isinstance(n_folds, bool) or n_folds < 1:
        raise ConfigError(f"--folds {n_folds!r}: the number of walk-forward folds must be an integer >= 1.")
    if window not in WINDOWS:
        raise ConfigError(f"--window {window!r} is unknown; use one of {list(WINDOWS)}.")


def _rebalances_per_fold(n_rebalances: int, n_folds: int) -> list[int]:
    """Split the out-of-sample rebalances into ``n_folds`` nearly equal consecutive counts."""
    base, extra = divmod(n_rebalances, n_folds)
    return [base + (1 if j < extra else 0) for j in range(n_folds)]


def walk_forward_folds(
    n_dates: int,
    lookback: int,
    horizon: int,
    n_folds: int,
    train_fraction: float,
    val_fraction: float,
    purge_days: int,
    window: str = "expanding",
) -> FoldPlan:
    """The walk-forward folds of a T-date panel.

    Parameters
    ----------
    n_dates : int
        T, dates in the panel.
    lookback, horizon : int
        Window length and label length in days.
    n_folds : int
        K >= 1 retrains; K = 1 is the single split's test span traded by one model.
    train_fraction, val_fraction : float
        The first fold's train and val shares, as in :func:`data.splits.make_splits`; the rest of the
        decisions is the out-of-sample period.  Every fold's val span has the first fold's length.
    purge_days : int
        Decision dates dropped between train and val and between val and test; >= horizon.
    window : "expanding" or "rolling"
        Train from the first decision, or on the first fold's train length before each val span.

    Returns
    -------
    FoldPlan

    Raises
    ------
    ConfigError
        n_folds < 1, an unknown window, purge_days < horizon, fractions out of range.
    DataError
        A fold would trade fewer than two rebalances (no Sharpe): says how many the period holds.
    """
    _check_args(lookback, horizon, train_fraction, val_fraction, purge_days)
    _check_fold_args(n_folds, window)
    n_train, n_val, n_oos = _split_sizes(n_dates, lookback, horizon, train_fraction, val_fraction, purge_days)
    if min(n_train, n_val) < min_split_decisions(horizon):
        raise DataError(
            f"too few dates: {n_dates} dates give a first train span of {n_train} and a val span of {n_val} "
            f"decisions; each needs >= {min_split_decisions(horizon)}. Use a longer panel or larger fractions."
        )
    n_rebalances = -(-n_oos // horizon) if n_oos > 0 else 0  # len(oos[::horizon])
    if n_rebalances < 2 * n_folds:
        raise DataError(
            f"the out-of-sample period holds {max(n_oos, 0)} decisions = {n_rebalances} rebalances every "
            f"{horizon} days, but {n_folds} folds need >= 2 each ({2 * n_folds}). Use fewer --folds or a "
            f"smaller data.train_fraction + data.val_fraction (now {train_fraction} + {val_fraction})."
        )
    first = lookback - 1
    oos_start = first + n_train + n_val + 2 * purge_days
    oos_stop = oos_start + n_oos
    folds, start = [], oos_start
    for count in _rebalances_per_fold(n_rebalances, n_folds):
        stop = min(start + count * horizon, oos_stop)
        val_stop = start - purge_days
        val_start = val_stop - n_val
        train_stop = val_start - purge_days
        train_start = first if window == "expanding" else train_stop - n_train
        folds.append(Splits(_frozen(train_start, train_stop), _frozen(val_start, val_stop), _frozen(start, stop)))
        start = stop
    return FoldPlan(tuple(folds), _frozen(oos_start, oos_stop), horizon)


def folds_for(n_dates: int, data_cfg, n_folds: int, window: str = "expanding") -> FoldPlan:
    """:func:`walk_forward_folds` with the windows, fractions and purge of a ``DataConfig``."""
    return walk_forward_folds(
        n_dates, data_cfg.lookback_days, data_cfg.prediction_horizon, n_folds,
        data_cfg.train_fraction, data_cfg.val_fraction, purge_of(data_cfg), window,
    )
