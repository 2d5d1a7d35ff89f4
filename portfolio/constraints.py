"""The portfolio constraints, stated once for every solver, check and report.

    1^T w = 1  and  long_only: 0 <= w [<= max_weight]  |  long_short: ||w||_1 <= leverage

- :func:`cvxpy_constraints`: the constraint set of every cvxpy problem (the cvxpylayers
  backend, the reference solves, the oracle and probe of :mod:`data.oracle`, the backtest
  baselines);
- :func:`infeasibility` / :func:`check_feasible`: constraint sets that no weights satisfy;
- :func:`held_by_bound`: whether a fixed weight of the torch solver is held by a bound;
- :func:`check_solution`: the feasibility check of every returned solution;
- :func:`describe`: the constraints in one line, as reports state them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from core.errors import SolverError

if TYPE_CHECKING:
    import cvxpy as cp

__all__ = ["check_feasible", "check_solution", "cvxpy_constraints", "describe", "held_by_bound", "infeasibility"]


def cvxpy_constraints(w: cp.Variable, constraint: str, max_weight, leverage: float) -> list:
    """The constraints on the weights ``w`` (n,) as a list of cvxpy constraints.

    constraint : "long_only" or "long_short"; max_weight (long_only; None = no upper bound);
    leverage : gross limit of long_short.
    """
    import cvxpy as cp  # here: the torch solver's processes never load cvxpy (~1 s per Ray worker)

    constraints = [cp.sum(w) == 1]
    if constraint == "long_only":
        constraints.append(w >= 0)
        if max_weight is not None:
            constraints.append(w <= max_weight)
    else:
        constraints.append(cp.norm1(w) <= leverage)
    return constraints


def infeasibility(long_only: bool, max_weight, leverage: float, n_assets: int) -> str | None:
    """Why no weights satisfy the constraints (with the fix), or None when some do."""
    if long_only and max_weight is not None and max_weight * n_assets < 1.0 - 1e-12:
        return (
            f"portfolio problem is infeasible: max_weight = {max_weight} with n_assets = {n_assets}"
            f" allows at most max_weight * n_assets = {max_weight * n_assets:.6g} < 1 in total, but the"
            f" weights must sum to 1. Set portfolio.max_weight >= {1.0 / n_assets:.6g} (or null)."
        )
    if not long_only and leverage < 1.0:
        return (
            f"portfolio problem is infeasible: leverage = {leverage} < 1, but sum |w| >= |sum w| = 1."
            " Set portfolio.leverage >= 1."
        )
    return None


def check_feasible(long_only: bool, max_weight, leverage: float, n_assets: int) -> None:
    """Raise SolverError (before any solve) when no weights satisfy the constraints."""
    reason = infeasibility(long_only, max_weight, leverage, n_assets)
    if reason is not None:
        raise SolverError(reason)


def held_by_bound(value: torch.Tensor, long_only: bool, max_weight) -> torch.Tensor:
    """Which fixed weights (their exact values, (B, n)) sit at a bound 0 or max_weight (long_only).

    Such a weight is held by the bound, not by the no-trade kink w_prev, even where w_prev has
    the same value: its gradient w.r.t. w_prev is 0.
    """
    if not long_only:
        return torch.zeros_like(value, dtype=torch.bool)
    hard = value == 0
    return hard | (value == max_weight) if max_weight is not None else hard


def check_solution(weights, w_prev, cfg, *, tol: float | None = None, backend: str = "portfolio layer") -> None:
    """Raise SolverError unless every row of ``weights`` is a feasible portfolio.

    Parameters
    ----------
    weights : (B, n) or (n,) numpy array or tensor
    w_prev : same shape (checked for finiteness; the previous portfolio must be a real one), or None
    cfg : PortfolioConfig (constraint, max_weight, leverage, feasibility_tol)
    tol : tolerance of the checks, default cfg.feasibility_tol
    backend : named in the message

    The checks: finite; not all zero (Clarabel returns ~0 silently on an infeasible problem);
    sum(w) = 1; long_only: w >= 0 and w <= max_weight; long_short: sum |w| <= leverage.
    """
    tol = cfg.feasibility_tol if tol is None else tol
    w = _as_2d(weights)
    prev = _as_2d(w_prev) if w_prev is not None else np.zeros_like(w)
    checks = [
        (~np.isfinite(w).all(1), lambda i: "weights are not finite"),
        (~np.isfinite(prev).all(1), lambda i: "w_prev is not finite"),
        (np.abs(w).max(1) <= tol, lambda i: "all weights are ~0 (the solver's answer to an infeasible problem)"),
        (np.abs(w.sum(1) - 1) > tol, lambda i: f"budget violated: sum(w) = {w[i].sum():.8g}, must be 1"),
    ]
    if cfg.constraint == "long_only":
        checks.append((w.min(1) < -tol, lambda i: f"long_only bound violated: min(w) = {w[i].min():.3e} < 0"))
        if cfg.max_weight is not None:
            checks.append((w.max(1) > cfg.max_weight + tol,
                           lambda i: f"max_weight violated: max(w) = {w[i].max():.8g} > {cfg.max_weight}"))
    else:
        checks.append((np.abs(w).sum(1) > cfg.leverage + tol,
                       lambda i: f"leverage violated: sum |w| = {np.abs(w[i]).sum():.8g} > {cfg.leverage}"))
    for bad, reason in checks:
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise SolverError(
                f"{backend}: batch element {i} (of {int(bad.sum())} failing): {reason(i)}"
                f" (feasibility_tol = {tol:g}). The solve failed or the constraints are infeasible"
                " (check portfolio.max_weight * n_assets >= 1, leverage >= 1)."
            )


def describe(cfg) -> str:
    """The constraints in one line: max weight for long_only, leverage for long_short only."""
    if cfg.constraint == "long_only":
        bound = "none" if cfg.max_weight is None else f"{cfg.max_weight:g}"
        return f"long_only (max weight {bound})"
    return f"long_short (leverage {cfg.leverage:g})"


def _as_2d(x) -> np.ndarray:
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)
    return a[None] if a.ndim == 1 else a
