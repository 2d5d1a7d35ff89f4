"""Risk and significance figures of a policy's per-rebalance net returns (the conventions of
:mod:`data.scoring`, which computes the returns and the Sharpe ratio for validation, backtest and
walk-forward alike).  Definitions (also in docs/evaluation.md), with ``r`` the n per-period net
returns of a policy rebalanced every ``horizon`` days and ``P = 252 / horizon`` periods a year:

* annual return ``mean(r) * P``; annual volatility ``std(r, ddof=1) * sqrt(P)``;
* Sharpe :func:`data.scoring.annualised_sharpe`, its standard error Lo (2002), iid;
* Sortino ``mean(r) / sqrt(sum(min(r, 0)^2) / (n - 1)) * sqrt(P)`` (downside below 0);
* max drawdown of the compounded equity (:func:`data.scoring.max_drawdown`); Calmar
  ``annual return / max drawdown``;
* CVaR 95 %: the mean loss over the worst 5 % of the periods, the fractional last one weighted
  (Rockafellar-Uryasev; equal to ``skfolio.measures.cvar``), per period, a positive number;
* Sharpe difference to a benchmark with the HAC delta-method test of Ledoit & Wolf (2008, sec. 3.1):
  Bartlett kernel, lag ``floor(4 (n / 100)^(2/9))`` (Newey-West), two-sided normal p-value;
* break-even cost: the cost rate at which a policy's net Sharpe falls to the benchmark's.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy.optimize import brentq
from scipy.stats import norm

from core.errors import DataError
from data.scoring import TRADING_DAYS, PolicyResult, annualised_sharpe, max_drawdown, sharpe_standard_error

BENCHMARK = "1/N"  # the policy every other is tested against
CVAR_LEVEL = 0.95
COST_SWEEP_BP = (0.0, 5.0, 10.0, 20.0)


def _periods(horizon: int) -> float:
    return TRADING_DAYS / horizon


def sortino(net: np.ndarray, horizon: int) -> float:
    """Annualised mean over the downside deviation below 0 (ddof 1); inf with no losing period."""
    net = np.asarray(net, dtype=np.float64)
    downside = math.sqrt(float(np.sum(np.minimum(net, 0.0) ** 2)) / (net.size - 1))
    if downside == 0.0:
        return math.inf
    return float(net.mean() / downside * math.sqrt(_periods(horizon)))


def cvar(net: np.ndarray, level: float = CVAR_LEVEL) -> float:
    """Mean loss of the worst ``1 - level`` share of the periods (the fractional last one weighted)."""
    net = np.sort(np.asarray(net, dtype=np.float64))  # ascending: worst first
    k = (1.0 - level) * net.size
    whole = max(0, int(math.ceil(k)) - 1)  # periods counted fully; the next one gets weight k - whole
    return float(-(net[:whole].sum() + (k - whole) * net[whole]) / k)


def policy_figures(result: PolicyResult) -> dict[str, float]:
    """Every single-policy figure of the module docstring, in report order."""
    net, h = result.net, result.horizon
    annual_return = float(net.mean() * _periods(h))
    mdd = max_drawdown(net)
    return {
        "annual_return": annual_return,
        "annual_volatility": float(net.std(ddof=1) * math.sqrt(_periods(h))),
        "sharpe": result.sharpe,
        "sharpe_se": sharpe_standard_error(net, h),
        "sortino": sortino(net, h),
        "max_drawdown": mdd,
        "calmar": annual_return / mdd if mdd > 0 else math.inf,
        "cvar_95": cvar(net),
        "turnover": result.mean_turnover,
    }


def newey_west_lag(n: int) -> int:
    return int(math.floor(4.0 * (n / 100.0) ** (2.0 / 9.0)))


def _hac_covariance(v: np.ndarray, lag: int) -> np.ndarray:
    """Bartlett-kernel (Newey-West) long-run covariance of the rows of v (n, d), demeaned."""
    d = v - v.mean(axis=0)
    n = len(d)
    psi = d.T @ d / n
    for j in range(1, lag + 1):
        gamma = d[j:].T @ d[:-j] / n  # (d, d)
        psi += (1.0 - j / (lag + 1.0)) * (gamma + gamma.T)
    return psi


def sharpe_difference(net: np.ndarray, benchmark: np.ndarray, horizon: int, lag: int | None = None) -> dict:
    """Annualised Sharpe(net) - Sharpe(benchmark) over the same periods, its HAC standard error and
    two-sided p-value (Ledoit & Wolf 2008, delta method on the first and second moments).

    Parameters
    ----------
    net, benchmark : np.ndarray, (n,)
        Per-period net returns of the policy and the benchmark on the same dates.
    horizon : int
    lag : int, optional
        Bartlett lag; default Newey-West's ``floor(4 (n / 100)^(2/9))``.

    Returns
    -------
    dict with ``difference``, ``se``, ``p_value`` (annualised units; p 1.0 for identical series).
    """
    a, b = np.asarray(net, dtype=np.float64), np.asarray(benchmark, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size < 3:
        raise DataError(f"sharpe_difference needs two 1-D series of one length >= 3, got {a.shape} and {b.shape}.")
    lag = newey_west_lag(a.size) if lag is None else lag
    v = np.column_stack([a, b, a * a, b * b])  # (n, 4)
    m = v.mean(axis=0)
    var_a, var_b = m[2] - m[0] ** 2, m[3] - m[1] ** 2
    if min(var_a, var_b) <= 0:
        raise DataError("sharpe_difference: a series is constant, so its Sharpe ratio is undefined.")
    grad = np.array([m[2] / var_a**1.5, -m[3] / var_b**1.5, -0.5 * m[0] / var_a**1.5, 0.5 * m[1] / var_b**1.5])
    scale = math.sqrt(_periods(horizon))
    diff = annualised_sharpe(a, horizon) - annualised_sharpe(b, horizon)  # the table's ddof=1 Sharpes
    se = math.sqrt(max(float(grad @ _hac_covariance(v, lag) @ grad), 0.0) / a.size) * scale
    p = 1.0 if se == 0.0 else float(2.0 * norm.sf(abs(diff) / se))
    return {"difference": float(diff), "se": float(se), "p_value": p}


def at_cost(result: PolicyResult, tc_rate: float) -> np.ndarray:
    """The policy's per-period net returns had every unit traded paid ``tc_rate`` (same weights)."""
    return result.gross - tc_rate * 2.0 * result.turnover


def cost_sweep(result: PolicyResult, rates_bp=COST_SWEEP_BP) -> dict[str, float]:
    """{"sharpe_<c>bp": net Sharpe at c basis points per unit traded} for the same weights."""
    return {f"sharpe_{c:g}bp": annualised_sharpe(at_cost(result, c * 1e-4), result.horizon) for c in rates_bp}


def break_even_cost(result: PolicyResult, benchmark: PolicyResult, max_rate: float = 1.0) -> float:
    """The cost rate (per unit traded) at which ``result``'s net Sharpe falls to ``benchmark``'s.

    Both are re-charged at that rate (the benchmark's own turnover pays too).  0.0 when the policy
    does not beat the benchmark even before costs; inf when it still does at ``max_rate``.
    """
    if not np.array_equal(result.indices, benchmark.indices):
        raise DataError("break_even_cost: the two policies must be scored on the same rebalance dates.")

    def gap(rate: float) -> float:
        return (annualised_sharpe(at_cost(result, rate), result.horizon)
                - annualised_sharpe(at_cost(benchmark, rate), benchmark.horizon))

    if gap(0.0) <= 0.0:
        return 0.0
    if gap(max_rate) > 0.0:
        return math.inf
    return float(brentq(gap, 0.0, max_rate, xtol=1e-10))


def figures_table(results: dict[str, PolicyResult], benchmark: str = BENCHMARK) -> pd.DataFrame:
    """One row per policy: :func:`policy_figures`, the Sharpe difference to ``benchmark`` with its
    p-value and the break-even cost (not for the benchmark itself), and the :func:`cost_sweep`."""
    if benchmark not in results:
        raise DataError(f"figures_table: the benchmark {benchmark!r} is not among the policies {list(results)}.")
    bench = results[benchmark]
    rows = []
    for name, res in results.items():
        row = {"policy": name, **policy_figures(res)}
        if name != benchmark:
            diff = sharpe_difference(res.net, bench.net, res.horizon)
            row.update(sharpe_vs_1n=diff["difference"], p_value_vs_1n=diff["p_value"],
                       break_even_cost=break_even_cost(res, bench))
        row.update(cost_sweep(res))
        rows.append(row)
    first = next(r for r in rows if r["policy"] != benchmark)  # has every column, in report order
    return pd.DataFrame(rows, columns=list(first))
