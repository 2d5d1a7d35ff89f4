"""Scoring a policy at non-overlapping rebalances: the one Sharpe / turnover / cost convention.

Used by the per-epoch validation metrics (``ray_jobs.steps.validate``), the backtest and
the reference policies of ``data.oracle``, so every Sharpe in the project is computed the same
way.  Conventions (also in docs/training.md):

* Rebalances are every ``horizon``-th decision date of a split: ``indices[::horizon]``, so each
  holding period's returns ``t+1 .. t+horizon`` are disjoint.
* The first rebalance trades from the 1/N portfolio; afterwards ``w_prev`` is the previous
  rebalance's target weights (no drift between rebalances).
* ``turnover_k = 0.5 * ||w_k - w_prev_k||_1`` (one-way); ``cost_k = tc_rate * ||w_k - w_prev_k||_1``
  (every unit bought or sold pays ``tc_rate``, as in the optimisation's cost term).
* ``net_k = w_k . r_k - cost_k`` with ``r_k`` the compounded horizon return of each factor.
* Sharpe = mean(net) / std(net, ddof=1) * sqrt(252 / horizon) (annualised; 0 when std < 1e-12);
  its standard error is Lo's (2002) iid form, :func:`sharpe_standard_error`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from core.constants import TRADING_DAYS_PER_YEAR as TRADING_DAYS


@dataclass(frozen=True)
class PolicyResult:
    """Per-rebalance record of one policy on one split; arrays are float64 numpy."""

    indices: np.ndarray  # (K,) decision indices into the panel's dates
    weights: np.ndarray  # (K, N) target weights
    w_prev: np.ndarray  # (K, N) weights held before each rebalance
    gross: np.ndarray  # (K,) w_k . r_k
    net: np.ndarray  # (K,) gross - cost
    turnover: np.ndarray  # (K,) one-way turnover
    horizon: int

    @property
    def sharpe(self) -> float:
        return annualised_sharpe(self.net, self.horizon)

    @property
    def mean_turnover(self) -> float:
        return float(self.turnover.mean())

    @property
    def n_rebalances(self) -> int:
        return len(self.indices)


def annualised_sharpe(net: np.ndarray, horizon: int) -> float:
    """mean / std (ddof=1) of per-period returns, annualised with 252 / horizon periods a year."""
    net = np.asarray(net, dtype=np.float64)
    if net.size < 2:
        raise ValueError(f"a Sharpe ratio needs >= 2 rebalances, got {net.size}")
    std = net.std(ddof=1)
    if std < 1e-12:  # constant returns: no risk measured, no Sharpe
        return 0.0
    return float(net.mean() / std * math.sqrt(TRADING_DAYS / horizon))


def sharpe_standard_error(net: np.ndarray, horizon: int) -> float:
    """Standard error of the annualised Sharpe ratio, Lo (2002), iid returns.

    With ``n`` per-period returns and per-period Sharpe ``s = mean / std`` (ddof=1; 0 for constant
    returns, as in :func:`annualised_sharpe`): ``SE = sqrt((1 + s^2 / 2) / n) * sqrt(252 / horizon)``.

    Parameters
    ----------
    net : np.ndarray, (n,)
        Per-period (per-rebalance) net returns.
    horizon : int
        Days per period.

    Returns
    -------
    float, in the units of :func:`annualised_sharpe`.
    """
    net = np.asarray(net, dtype=np.float64)
    return sharpe_standard_error_of(annualised_sharpe(net, horizon), net.size, horizon)  # checks n >= 2


def sharpe_standard_error_of(sharpe: float, n: int, horizon: int) -> float:
    """:func:`sharpe_standard_error` from an annualised Sharpe ratio and its number of periods."""
    periods = TRADING_DAYS / horizon
    s = sharpe / math.sqrt(periods)  # per-period Sharpe
    return float(math.sqrt((1.0 + 0.5 * s * s) / n) * math.sqrt(periods))


def max_drawdown(net: np.ndarray) -> float:
    """Largest peak-to-trough loss of the compounded equity curve, as a positive fraction."""
    equity = np.cumprod(1.0 + np.asarray(net, dtype=np.float64))
    peak = np.maximum.accumulate(np.concatenate([[1.0], equity]))[1:]
    return float(np.max(1.0 - equity / peak))


def score_weights(
    indices: np.ndarray, weights: np.ndarray, w_prev: np.ndarray, r_horizon: np.ndarray, tc_rate: float, horizon: int
) -> PolicyResult:
    """Net returns and turnover of given weights.  weights, w_prev, r_horizon: (K, N)."""
    weights = np.asarray(weights, dtype=np.float64)
    w_prev = np.asarray(w_prev, dtype=np.float64)
    traded = np.abs(weights - w_prev).sum(axis=1)  # (K,)
    gross = (weights * np.asarray(r_horizon, dtype=np.float64)).sum(axis=1)  # (K,)
    return PolicyResult(
        indices=np.asarray(indices), weights=weights, w_prev=w_prev, gross=gross,
        net=gross - tc_rate * traded, turnover=0.5 * traded, horizon=horizon,
    )
