"""Out-of-sample evaluation of a policy at non-overlapping rebalances.

Used for the per-epoch validation metrics and by the backtest, so both compute the Sharpe the same
way; the numpy scorer lives in :mod:`data.scoring` (shared with ``data.oracle``).  Conventions
(also in docs/training.md):

* Rebalances are every ``horizon``-th decision date of a split: ``indices[::horizon]``, so each
  holding period's returns ``t+1 .. t+horizon`` are disjoint.
* The first rebalance trades from the 1/N portfolio; afterwards ``w_prev`` is the previous
  rebalance's target weights (no drift between rebalances).
* ``turnover_k = 0.5 * ||w_k - w_prev_k||_1`` (one-way); ``cost_k = tc_rate * ||w_k - w_prev_k||_1``
  (every unit bought or sold pays ``tc_rate``, as in the optimisation's cost term).
* ``net_k = w_k . r_k - cost_k`` with ``r_k`` the compounded horizon return of each factor.
* Sharpe = mean(net) / std(net, ddof=1) * sqrt(252 / horizon) (annualised; 0 when std < 1e-12).
"""

from __future__ import annotations

import torch

from data.scoring import TRADING_DAYS, PolicyResult, annualised_sharpe, max_drawdown, score_weights

__all__ = ["TRADING_DAYS", "PolicyResult", "annualised_sharpe", "chain_solves", "max_drawdown", "score_weights"]


def chain_solves(solve, mu: torch.Tensor, cov_factor: torch.Tensor, cov_diag: torch.Tensor, tc_rate: float):
    """Solve the rebalances in order, each trading from the previous target weights.

    ``solve(mu, cov_factor, cov_diag, w_prev) -> weights`` is a batched portfolio layer.  With no
    transaction cost the previous weights do not enter the problem, so one batched solve suffices.

    Returns (weights (K, N), w_prev (K, N)) float64 tensors.
    """
    k, n = mu.shape
    dtype = torch.float64
    w0 = torch.full((1, n), 1.0 / n, dtype=dtype, device=mu.device)
    if tc_rate == 0.0:
        weights = solve(mu, cov_factor, cov_diag, w0.expand(k, n)).to(dtype)  # (K, N)
        w_prev = torch.cat([w0, weights[:-1]], dim=0)  # (K, N)
        return weights, w_prev
    rows, prevs, prev = [], [], w0
    for i in range(k):
        w = solve(mu[i : i + 1], cov_factor[i : i + 1], cov_diag[i : i + 1], prev).to(dtype)  # (1, N)
        rows.append(w)
        prevs.append(prev)
        prev = w
    return torch.cat(rows), torch.cat(prevs)
