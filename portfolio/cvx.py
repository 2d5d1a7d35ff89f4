"""cvxpy side of the portfolio layer: the DPP problem, the cvxpylayers backend, reference solves.

The problem (per batch element)::

    maximise   mu^T w - gamma * (||B^T w||^2 + ||sqrt(d) * w||^2) - c * ||w - w_prev||_1
    subject to 1^T w = 1,  long_only: 0 <= w [<= max_weight],  long_short: ||w||_1 <= leverage

is written in DPP form (parameters mu, B, sqrt(d) [, w_prev]; no quad_form) so that cvxpylayers
can canonicalise it once and diffcp can differentiate the cone program.
"""

from __future__ import annotations

import functools
import warnings

import cvxpy as cp
import numpy as np
import torch

from core.errors import SolverError
from portfolio.constraints import cvxpy_constraints

SOLVER_ARGS = {
    # Measured on random n=104 problems against the exact torch solve (docs/portfolio.md).
    "ECOS": {"abstol": 1e-10, "reltol": 1e-10, "feastol": 1e-10, "max_iters": 200},
    "Clarabel": {"tol_gap_abs": 1e-10, "tol_gap_rel": 1e-10, "tol_feas": 1e-10, "max_iter": 200},
    "SCS": {"eps_abs": 1e-9, "eps_rel": 1e-9, "max_iters": 100_000},
}
"""solver_args per cvxpylayers cone solver, tight enough for training gradients."""


def build_problem(n_assets: int, cov_rank: int, constraint: str, max_weight, leverage: float,
                  risk_aversion: float, tc_rate: float, tc_param: bool = False, prev_param: bool = False):
    """The parametrised DPP problem.

    Returns
    -------
    problem : cp.Problem
    params : list of cp.Parameter  [mu (n,), cov_factor (n, k), sqrt_diag (n,), w_prev (n,)];
        w_prev only when tc_rate > 0 (an unused parameter is not allowed by cvxpylayers);
        with tc_param: [..., cost * w_prev (n,), cost ()] instead of w_prev and the constant tc_rate;
        with prev_param: w_prev also when tc_rate = 0 (a cost term 0 * ||w - w_prev||_1, the
        oracle's problem: the same cone program for every tc_rate).
    w : cp.Variable (n,)
    """
    n, k = n_assets, cov_rank
    w = cp.Variable(n)
    mu, factor, sqrt_diag = cp.Parameter(n), cp.Parameter((n, k)), cp.Parameter(n)
    params = [mu, factor, sqrt_diag]
    risk = cp.sum_squares(factor.T @ w) + cp.sum_squares(cp.multiply(sqrt_diag, w))
    objective = mu @ w - risk_aversion * risk
    if tc_rate > 0 and tc_param:  # cost * w_prev is one parameter: a product of two is not DPP
        cost, cost_prev = cp.Parameter(nonneg=True), cp.Parameter(n)
        params += [cost_prev, cost]
        objective = objective - cp.norm1(cost * w - cost_prev)
    elif tc_rate > 0 or prev_param:
        w_prev = cp.Parameter(n)
        params.append(w_prev)
        objective = objective - tc_rate * cp.norm1(w - w_prev)
    problem = cp.Problem(cp.Maximize(objective), cvxpy_constraints(w, constraint, max_weight, leverage))
    if not problem.is_dpp():  # pragma: no cover - guards a future edit of the formulation
        raise SolverError("portfolio problem is not DPP; cvxpylayers cannot differentiate it (a bug).")
    return problem, params, w


def _problem_key(n_assets: int, cov_rank: int, cfg) -> tuple:
    return (n_assets, cov_rank, cfg.constraint, cfg.max_weight, float(cfg.leverage),
            float(cfg.risk_aversion), float(cfg.tc_rate))


class CvxpyBackend:
    """cvxpylayers (diffcp) solve of a batch; the reference backend of PortfolioLayer."""

    def __init__(self, n_assets: int, cov_rank: int, cfg):
        from cvxpylayers.torch import CvxpyLayer

        problem, params, w = build_problem(*_problem_key(n_assets, cov_rank, cfg))
        self.uses_prev = cfg.tc_rate > 0
        self.method = cfg.solve_method
        self.solver_args = {"solve_method": cfg.solve_method, **SOLVER_ARGS[cfg.solve_method]}
        self.layer = CvxpyLayer(problem, parameters=params, variables=[w])

    def __call__(self, mu, cov_factor, cov_diag, w_prev) -> torch.Tensor:
        """(B, n) float64 weights on mu's device; gradients flow to all inputs."""
        cpu = [x.to("cpu", torch.float64) for x in (mu, cov_factor, cov_diag, w_prev)]
        params = cpu[:2] + [cpu[2].sqrt()] + (cpu[3:] if self.uses_prev else [])
        try:
            with warnings.catch_warnings():
                # diffcp warns "Solved/Inaccurate" without saying which element; the solution
                # checks in PortfolioLayer decide what is acceptable.
                warnings.filterwarnings("ignore", message="Solved/Inaccurate")
                (w,) = self.layer(*params, solver_args=self.solver_args)
        except Exception as exc:  # diffcp.SolverError, ValueError from the cone solver, ...
            raise self._locate_failure(params, exc) from exc
        return w.to(mu.device)

    def _locate_failure(self, params, exc: Exception) -> SolverError:
        """Re-solve element by element to name the first one that fails."""
        for i in range(params[0].shape[0]):
            try:
                with torch.no_grad(), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    self.layer(*[p[i : i + 1].detach() for p in params], solver_args=self.solver_args)
            except Exception as inner:  # noqa: BLE001 - we re-raise it typed, with context
                return SolverError(
                    f"cvxpylayers ({self.method}) failed on batch element {i}: {type(inner).__name__}:"
                    f" {inner}. The problem is infeasible or numerically hard (check the inputs of"
                    " that element and portfolio.max_weight / leverage), or try another"
                    " portfolio.solve_method."
                )
        return SolverError(
            f"cvxpylayers ({self.method}) failed on the batch of {params[0].shape[0]}: {type(exc).__name__}:"
            f" {exc} (every element solves on its own; retry or try another portfolio.solve_method)."
        )


@functools.lru_cache(maxsize=16)
def _reference_problem(key: tuple):
    return build_problem(*key, tc_param=True)


def objective_scale(mu: np.ndarray, diag_var: np.ndarray, risk_aversion: float, tc_rate: float) -> float:
    """Largest objective coefficient; dividing by it makes Clarabel's tolerances relative.

    Without it a tight tol_gap_abs on objectives ~1e-3 leaves weights at a no-trade kink off
    by ~3e-5 (measured); with it, ~1e-8.
    """
    return float(max(np.abs(mu).max(), 2 * risk_aversion * diag_var.max(), tc_rate, 1e-300))


def _as_batch(x, ndim: int) -> tuple[np.ndarray, bool]:
    """numpy float64 with a batch dim; whether the input had none."""
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    a = a.astype(np.float64)
    single = a.ndim == ndim - 1
    return (a[None] if single else a), single


def _solve_checked(problem: cp.Problem, i: int, what: str, **kwargs) -> None:
    try:
        problem.solve(solver=cp.CLARABEL, **kwargs)
    except cp.error.SolverError as exc:
        raise SolverError(f"{what}: batch element {i}: Clarabel failed ({exc}).") from exc
    if problem.status != cp.OPTIMAL:
        raise SolverError(
            f"{what}: batch element {i}: Clarabel returned status {problem.status!r} (not optimal):"
            " the problem is infeasible for this configuration or the data are badly scaled."
        )


def _clarabel_tol(tol: float) -> dict:
    return {"tol_gap_abs": tol, "tol_gap_rel": tol, "tol_feas": tol, "max_iter": 500}


def solve_reference(mu, cov_factor, cov_diag, w_prev, cfg, tol: float = 1e-12) -> np.ndarray:
    """The same problem solved directly by cvxpy + Clarabel at a tight tolerance.

    The objective is divided by its largest coefficient first (same minimiser), so that `tol`
    (Clarabel's gap and feasibility tolerances) is relative: tol = 1e-12 matches the exact torch
    solve to ~1e-8 on n = 104; 1e-10 to ~4e-6.

    Parameters
    ----------
    mu : (B, n) or (n,); cov_factor : (B, n, k) or (n, k); cov_diag : (B, n) or (n,) > 0;
    w_prev : (B, n) or (n,) (numpy or torch)
    cfg : PortfolioConfig (constraint, max_weight, leverage, risk_aversion, tc_rate are used)

    Returns
    -------
    numpy float64 weights (B, n), or (n,) for unbatched inputs.  Raises SolverError naming the
    batch element when Clarabel does not report an optimal solution.
    """
    mu_b, single = _as_batch(mu, 2)
    factor_b, _ = _as_batch(cov_factor, 3)
    diag_b, _ = _as_batch(cov_diag, 2)
    prev_b, _ = _as_batch(w_prev, 2)
    n, k = factor_b.shape[1:]
    problem, params, w = _reference_problem(_problem_key(n, k, cfg))
    out = np.empty_like(mu_b)
    for i in range(mu_b.shape[0]):
        if not (np.isfinite(mu_b[i]).all() and np.isfinite(factor_b[i]).all() and np.isfinite(prev_b[i]).all()
                and np.isfinite(diag_b[i]).all() and (diag_b[i] > 0).all()):
            raise SolverError(f"solve_reference: batch element {i}: non-finite inputs or cov_diag <= 0.")
        s = objective_scale(mu_b[i], diag_b[i] + (factor_b[i] ** 2).sum(1), cfg.risk_aversion, cfg.tc_rate)
        c = cfg.tc_rate / s
        values = [mu_b[i] / s, factor_b[i] / np.sqrt(s), np.sqrt(diag_b[i] / s), c * prev_b[i], c]
        for param, value in zip(params, values):
            param.value = value
        _solve_checked(problem, i, "solve_reference", **_clarabel_tol(tol))
        out[i] = w.value
    return out[0] if single else out


def solve_full_cov(mu, sigma, w_prev, cfg, tol: float = 1e-10) -> np.ndarray:
    """The portfolio problem with a full covariance matrix, solved by cvxpy + Clarabel.

    For backtest baselines: minimum variance (mu = 0) and sample mean-variance.

    Parameters
    ----------
    mu : (B, n) or (n,)
    sigma : (B, n, n) or (n, n), symmetric PSD (e.g. a sample covariance, singular allowed)
    w_prev : (B, n) or (n,), or None = start from cash (zeros; only matters if tc_rate > 0)
    cfg : PortfolioConfig

    Returns
    -------
    numpy float64 weights (B, n), or (n,) for unbatched inputs.  Raises SolverError naming the
    element when sigma is not symmetric PSD or Clarabel does not report an optimal solution.
    """
    mu_b, single = _as_batch(mu, 2)
    sigma_b, _ = _as_batch(sigma, 3)
    prev_b = np.zeros_like(mu_b) if w_prev is None else _as_batch(w_prev, 2)[0]
    out = np.empty_like(mu_b)
    for i in range(mu_b.shape[0]):
        cov = _checked_covariance(sigma_b[i], i)
        s = objective_scale(mu_b[i], np.diag(cov), cfg.risk_aversion, cfg.tc_rate)
        w = cp.Variable(mu_b.shape[1])
        objective = mu_b[i] / s @ w - cfg.risk_aversion / s * cp.quad_form(w, cp.psd_wrap(cov))
        if cfg.tc_rate > 0:
            objective = objective - cfg.tc_rate / s * cp.norm1(w - prev_b[i])
        problem = cp.Problem(cp.Maximize(objective), cvxpy_constraints(w, cfg.constraint, cfg.max_weight, cfg.leverage))
        _solve_checked(problem, i, "solve_full_cov", **_clarabel_tol(tol))
        out[i] = w.value
    return out[0] if single else out


def _checked_covariance(s: np.ndarray, i: int) -> np.ndarray:
    """Symmetrised sigma; refuses non-finite, asymmetric or indefinite matrices."""
    scale = np.abs(s).max() if s.size else 0.0
    if not np.isfinite(s).all():
        raise SolverError(f"solve_full_cov: batch element {i}: sigma contains NaN or inf.")
    if np.abs(s - s.T).max() > 1e-8 * max(scale, 1e-300):
        raise SolverError(
            f"solve_full_cov: batch element {i}: sigma is not symmetric (max |S - S^T| ="
            f" {np.abs(s - s.T).max():.2e}); pass a covariance matrix."
        )
    s = 0.5 * (s + s.T)
    low = np.linalg.eigvalsh(s)[0]
    if low < -1e-10 * max(scale, 1e-300):
        raise SolverError(
            f"solve_full_cov: batch element {i}: sigma is not positive semidefinite (smallest"
            f" eigenvalue {low:.3e}); the mean-variance problem would not be convex. Shrink it"
            " towards its diagonal or use a factor model."
        )
    return s
