"""Time splits of the decision dates, purged so that no label of one split overlaps the next.

Decision index ``t`` (into ``panel.dates``) is valid iff ``t >= lookback - 1`` (a full window of
dates ``t-lookback+1 .. t``) and ``t + horizon <= T - 1`` (all label days ``t+1 .. t+horizon``
exist).  The valid decisions are cut by time into train, val and test; ``purge_days`` decision
dates are dropped before val and before test.  With ``purge_days >= horizon`` this gives the rule
the tests pin:

    last_train + horizon < first_val     and     last_val + horizon < first_test

so every label day of train is before the first val decision date, hence before every val label
day (and likewise val -> test).  ``train_fraction`` / ``val_fraction`` are shares of the decision
dates left after the two purges; test gets the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.config import DataConfig
from core.errors import ConfigError, DataError


@dataclass(frozen=True, eq=False)
class Splits:
    """Decision indices (into ``panel.dates``) per split: int64, increasing, read-only.

    Attributes
    ----------
    train, val, test : np.ndarray, int64, (n_train,), (n_val,), (n_test,)
    """

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def items(self) -> list[tuple[str, np.ndarray]]:
        """[("train", idx), ("val", idx), ("test", idx)]."""
        return [("train", self.train), ("val", self.val), ("test", self.test)]


def min_split_decisions(horizon: int) -> int:
    """Smallest split: horizon + 1 decision dates give two non-overlapping rebalances (a Sharpe)."""
    return horizon + 1


def purge_of(data_cfg: DataConfig) -> int:
    """``data.purge_days`` with null meaning ``prediction_horizon``."""
    return data_cfg.prediction_horizon if data_cfg.purge_days is None else data_cfg.purge_days


def _split_sizes(n_dates, lookback, horizon, train_fraction, val_fraction, purge_days) -> tuple[int, int, int]:
    n_decisions = n_dates - lookback - horizon + 1
    n_avail = n_decisions - 2 * purge_days
    n_train = int(np.floor(train_fraction * n_avail))
    n_val = int(np.floor(val_fraction * n_avail))
    return n_train, n_val, n_avail - n_train - n_val


def _check_args(lookback, horizon, train_fraction, val_fraction, purge_days) -> None:
    if lookback < 1 or horizon < 1:
        raise ConfigError(f"lookback ({lookback}) and horizon ({horizon}) must be >= 1.")
    if purge_days < horizon:
        raise ConfigError(
            f"data.purge_days = {purge_days} is shorter than prediction_horizon = {horizon}: the labels of "
            f"one split would overlap the next. Set purge_days >= {horizon}."
        )
    if not (0 < train_fraction < 1 and 0 < val_fraction < 1 and train_fraction + val_fraction < 1):
        raise ConfigError(
            f"train_fraction = {train_fraction}, val_fraction = {val_fraction}: each must be in (0, 1) "
            "and their sum < 1 to leave a test split."
        )


def make_splits(
    n_dates: int,
    lookback: int,
    horizon: int,
    train_fraction: float,
    val_fraction: float,
    purge_days: int,
) -> Splits:
    """Cut the valid decision indices of a T-date panel into purged train / val / test.

    Parameters
    ----------
    n_dates : int
        T, dates in the panel.
    lookback, horizon : int
        Window length and label length in days.
    train_fraction, val_fraction : float
        Shares of the decision dates left after the purges.
    purge_days : int
        Decision dates dropped between consecutive splits; must be >= horizon.

    Returns
    -------
    Splits
        int64 index arrays; ``last_train + horizon < first_val``, ``last_val + horizon < first_test``.

    Raises
    ------
    DataError
        Too few dates for every split to get ``horizon + 1`` decision dates (says how many are needed).
    """
    _check_args(lookback, horizon, train_fraction, val_fraction, purge_days)
    sizes = _split_sizes(n_dates, lookback, horizon, train_fraction, val_fraction, purge_days)
    if min(sizes) < min_split_decisions(horizon):
        need = min_panel_dates(lookback, horizon, train_fraction, val_fraction, purge_days)
        raise DataError(
            f"too few dates: {n_dates} dates give split sizes (train, val, test) = {sizes} decision dates, "
            f"but each needs >= {min_split_decisions(horizon)}. lookback {lookback} + horizon {horizon} + "
            f"2 purges of {purge_days} + three splits need at least {need} dates: use a longer panel or a "
            "shorter data.lookback_days."
        )
    n_train, n_val, n_test = sizes
    first = lookback - 1
    starts = (first, first + n_train + purge_days, first + n_train + n_val + 2 * purge_days)
    arrays = []
    for start, size in zip(starts, sizes):
        idx = np.arange(start, start + size, dtype=np.int64)
        idx.setflags(write=False)
        arrays.append(idx)
    return Splits(*arrays)


def min_panel_dates(lookback, horizon, train_fraction, val_fraction, purge_days) -> int:
    """Fewest panel dates for which :func:`make_splits` gives three large-enough splits."""
    _check_args(lookback, horizon, train_fraction, val_fraction, purge_days)
    n = lookback + horizon + 2 * purge_days + 3 * min_split_decisions(horizon) - 1
    smallest = min_split_decisions(horizon)
    while min(_split_sizes(n, lookback, horizon, train_fraction, val_fraction, purge_days)) < smallest:
        n += 1
    return n


def splits_for(n_dates: int, data_cfg: DataConfig) -> Splits:
    """:func:`make_splits` with the windows, fractions and purge of ``data_cfg``."""
    return make_splits(
        n_dates, data_cfg.lookback_days, data_cfg.prediction_horizon,
        data_cfg.train_fraction, data_cfg.val_fraction, purge_of(data_cfg),
    )


def rebalance_indices(split: np.ndarray, horizon: int) -> np.ndarray:
    """Non-overlapping decisions of one split: every ``horizon``-th index from its first.  (n_reb,)."""
    return split[::horizon]


def block_starts(train: np.ndarray, size: int, horizon: int) -> np.ndarray:
    """Positions in ``train`` where a block of ``size`` rebalance dates one ``horizon`` apart
    starts and ends inside the split (``training.batch_dates: blocks``).  (n_starts,) int64.

    Raises ConfigError when the split is shorter than one block.
    """
    span = (size - 1) * horizon  # decision dates from a block's first to its last
    if len(train) <= span:
        raise ConfigError(
            f"training.batch_dates = 'blocks': a batch of {size} rebalance dates {horizon} days apart spans "
            f"{span + 1} decision dates, but the training split holds {len(train)}. Lower training.batch_size "
            f"so that each worker's share is at most {(len(train) - 1) // horizon + 1}, or use "
            "training.batch_dates=random."
        )
    return np.arange(len(train) - span, dtype=np.int64)


def block_dates(train: np.ndarray, start: int, size: int, horizon: int) -> np.ndarray:
    """The block of ``size`` rebalance dates one ``horizon`` apart from ``train[start]``.  (size,) int64."""
    block = train[start : start + (size - 1) * horizon + 1 : horizon]
    if len(block) != size:
        raise ValueError(f"block start {start}: only {len(block)} of {size} dates fit a training split of {len(train)}.")
    return block
