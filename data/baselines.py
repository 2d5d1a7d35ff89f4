"""Classic baselines from skfolio, under the training constraints, at given decision dates.

Every policy decides at decision index t from the ``ESTIMATION_DAYS`` daily returns of dates
t-E+1..t only (no look-ahead), under the constraints of ``PortfolioConfig``: long_only
``0 <= w <= max_weight``, ``sum w = 1``; long_short ``sum w = 1``, ``||w||_1 <= leverage``
(as skfolio's ``max_long = (L + 1) / 2`` and ``max_short = (L - 1) / 2``).  Moments are daily;
the horizon scales mean and covariance alike, which moves no optimum of these objectives.

* **1/N**: ``EqualWeighted``.
* **min variance** / **sample mean-variance**: ``MeanRisk`` (variance; ``max mu'w - gamma w'Sigma w`` with
  the training ``risk_aversion`` gamma), the covariance shrunk ``SHRINKAGE`` towards its diagonal
  (:class:`DiagonalShrunkCovariance`: skfolio's ``ShrunkCovariance`` shrinks towards a scaled
  identity, another target, so this one estimator is written here in skfolio's API).  No cost
  term in the objective: with it, 5-day risk never pays for leaving 1/N and "min variance"
  degenerates to 1/N; the backtest charges the costs all the same.
* **risk parity**: ``RiskBudgeting`` with equal budgets (equal risk contribution), same covariance.
* **HRP**: ``HierarchicalRiskParity`` (variance) on the window's returns.

skfolio is the reference (:func:`skfolio_weights`); :func:`baseline_weights` takes a measured
fast path where skfolio was the backtest's bottleneck (``benchmarks.baselines``, docs/performance.md),
each held to skfolio's weights by the tests: min variance and mean-variance in one batch of the
portfolio layer's torch solver; risk parity by Newton on the ERC problem for all dates at once,
with skfolio's ``RiskBudgeting`` itself at any date where the ERC portfolio breaks ``max_weight``;
HRP as skfolio's algorithm written out in scipy (:mod:`data.risk_parity`).

Inverse volatility is in :mod:`ray_jobs.backtest`: skfolio's ``InverseVolatility`` takes no weight
bounds, so the ``max_weight`` cap is applied there by hand (:func:`ray_jobs.backtest.cap_weights`).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from skfolio.exceptions import OptimizationError
from skfolio.measures import RiskMeasure
from skfolio.moments import BaseCovariance
from skfolio.optimization import EqualWeighted, HierarchicalRiskParity, MeanRisk, ObjectiveFunction, RiskBudgeting
from skfolio.prior import EmpiricalPrior

from core.config import PortfolioConfig
from core.errors import DataError, SolverError
from data.risk_parity import erc_weights, hrp_weights
from portfolio.layer import PortfolioLayer
from portfolio.torch_solver import single_thread

ESTIMATION_DAYS = 252
SHRINKAGE = 0.2  # weight of the diagonal target in the sample covariance
# Clarabel's default tolerances leave min-variance weights ~2e-4 from the exact optimum (daily
# variances ~1e-4 make the objective tiny); these match a direct cvxpy solve to ~2e-5.
SOLVER_PARAMS = {"tol_gap_abs": 1e-10, "tol_gap_rel": 1e-10, "tol_feas": 1e-10}


class DiagonalShrunkCovariance(BaseCovariance):
    """``(1 - shrinkage) * S + shrinkage * diag(S)``, S the sample covariance (ddof 1).

    ``nearest`` is off by default: with positive variances the shrunk matrix is positive definite
    (a PSD S plus a positive diagonal), so skfolio's nearest-PD repair would only cost its two
    eigendecompositions (~15 % of a risk parity fit on 104 factors).
    """

    def __init__(self, shrinkage: float = SHRINKAGE, nearest: bool = False, higham: bool = False,
                 higham_max_iteration: int = 100):
        super().__init__(nearest=nearest, higham=higham, higham_max_iteration=higham_max_iteration)
        self.shrinkage = shrinkage

    def fit(self, X, y=None) -> "DiagonalShrunkCovariance":
        x = np.asarray(X, dtype=np.float64)  # (E, N)
        sample = np.cov(x, rowvar=False, ddof=1)  # (N, N)
        shrunk = (1 - self.shrinkage) * sample + self.shrinkage * np.diag(np.diag(sample))
        self._set_covariance(shrunk)
        return self


def _prior() -> EmpiricalPrior:
    return EmpiricalPrior(covariance_estimator=DiagonalShrunkCovariance())


def _bounds(pf: PortfolioConfig) -> dict:
    if pf.constraint == "long_only":
        return {"min_weights": 0.0, "max_weights": 1.0 if pf.max_weight is None else pf.max_weight}
    return {"min_weights": None, "max_weights": None,
            "max_long": (pf.leverage + 1) / 2, "max_short": (pf.leverage - 1) / 2}


def skfolio_model(name: str, pf: PortfolioConfig):
    """An unfitted skfolio estimator of one baseline under the constraints of ``pf``."""
    bounds = _bounds(pf)
    if name == "1/N":
        return EqualWeighted()
    if name == "min variance":
        return MeanRisk(risk_measure=RiskMeasure.VARIANCE, prior_estimator=_prior(), budget=1.0,
                        solver_params=SOLVER_PARAMS, **bounds)
    if name == "sample mean-variance":
        return MeanRisk(objective_function=ObjectiveFunction.MAXIMIZE_UTILITY, risk_measure=RiskMeasure.VARIANCE,
                        risk_aversion=pf.risk_aversion, prior_estimator=_prior(), budget=1.0,
                        solver_params=SOLVER_PARAMS, **bounds)
    _check_long_only(name, pf)
    if name == "risk parity":
        return RiskBudgeting(risk_measure=RiskMeasure.VARIANCE, prior_estimator=_prior(), solver_params=SOLVER_PARAMS,
                             **bounds)
    if name == "HRP":
        return HierarchicalRiskParity(risk_measure=RiskMeasure.VARIANCE, **bounds)
    raise DataError(f"unknown baseline {name!r}; one of {list(BASELINES)}.")


def _check_long_only(name: str, pf: PortfolioConfig) -> None:
    if pf.constraint != "long_only":
        raise SolverError(f"the {name!r} baseline is long-only (skfolio's {name} has no leverage budget); "
                          "it is not run for portfolio.constraint = 'long_short'.")


BASELINES = ("1/N", "min variance", "sample mean-variance", "risk parity", "HRP")


def baselines_for(pf: PortfolioConfig) -> tuple[str, ...]:
    """The baselines that run under ``pf`` (risk parity and HRP are long-only)."""
    return BASELINES if pf.constraint == "long_only" else BASELINES[:3]


def check_history(indices: np.ndarray) -> None:
    if int(np.min(indices)) < ESTIMATION_DAYS - 1:
        raise DataError(
            f"the baselines need {ESTIMATION_DAYS} days of history before the first rebalance "
            f"(index {int(np.min(indices))}); use a longer panel."
        )


def skfolio_weights(name: str, returns: np.ndarray, indices: np.ndarray, pf: PortfolioConfig) -> np.ndarray:
    """(K, N) weights of baseline ``name`` by skfolio's estimator, one fit per date (the reference)."""
    check_history(indices)
    rows = []
    for t in np.asarray(indices):
        window = returns[int(t) - ESTIMATION_DAYS + 1: int(t) + 1]  # (E, N), dates <= t only
        try:
            # a fresh estimator per date: a refitted one may start from its previous solution
            rows.append(np.asarray(skfolio_model(name, pf).fit(window).weights_, dtype=np.float64))
        except OptimizationError as exc:
            raise SolverError(f"the {name} baseline (skfolio) failed at decision index {int(t)}: {exc}") from None
    return np.vstack(rows)


FAST = ("min variance", "sample mean-variance", "risk parity", "HRP")
"""Baselines with a fast path (1/N is skfolio's ``EqualWeighted``, which costs nothing)."""


def _windows(returns: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """(K, E, N) the estimation windows of the decision indices (K,): dates t-E+1..t only."""
    check_history(indices)
    idx = np.asarray(indices, dtype=np.int64)
    return np.asarray(returns, dtype=np.float64)[idx[:, None] + np.arange(-ESTIMATION_DAYS + 1, 1)]


def sample_covariances(windows: np.ndarray) -> torch.Tensor:
    """(K, N, N) sample covariances (ddof 1) of windows (K, E, N), in torch on one thread
    (numpy's threaded BLAS stalls when another process holds a core)."""
    x = torch.from_numpy(windows)
    with single_thread():
        centred = x - x.mean(1, keepdim=True)
        return centred.transpose(1, 2) @ centred / (x.shape[1] - 1)


def mean_variance_weights(returns: np.ndarray, indices: np.ndarray, pf: PortfolioConfig, use_mean: bool) -> np.ndarray:
    """(K, N) min variance (``use_mean`` False) or sample mean-variance weights, all dates in one batch.

    The problem of skfolio's ``MeanRisk`` above (covariance shrunk towards its diagonal, no cost
    term) written in the portfolio layer's factor form, ``Sigma = B B^T + diag(d)`` with B the
    Cholesky factor of ``(1 - s) S`` (N, N; S the sample covariance, positive definite for
    E > N days) and ``d = s * diag(S)``, and solved for every decision date at once by the
    layer's exact torch solver (the constraints of :mod:`portfolio.constraints`).  Min variance
    is ``mu = 0``; any risk aversion gives its optimum.  The square factor keeps the solver's
    dual at N + 2 instead of E + 2 (a factor of the centred window, (N, E), gave the same weights
    to 3e-15 and was 4-6x slower).  Measured in ``benchmarks.baselines`` (docs/performance.md);
    the tests hold it to skfolio's weights within 1e-4.
    """
    windows = _windows(returns, indices)  # (K, E, N), dates <= t
    sample = sample_covariances(windows)  # (K, N, N)
    with single_thread():
        diag = SHRINKAGE * torch.diagonal(sample, dim1=1, dim2=2)  # (K, N)
        factor, info = torch.linalg.cholesky_ex((1 - SHRINKAGE) * sample)  # (K, N, N)
    if bool((info > 0).any()):
        bad = int(np.asarray(indices)[int((info > 0).nonzero()[0, 0])])
        raise SolverError(f"the sample covariance at decision index {bad} is singular (a constant or duplicated"
                          " factor in its window?); the mean-variance baselines need it positive definite.")
    mu = torch.from_numpy(windows.mean(axis=1)) if use_mean else torch.zeros_like(diag)  # (K, N)
    # the objective over its largest coefficient (same minimiser; daily variances ~1e-4 would
    # leave the solver's absolute tolerances loose), as portfolio.cvx.objective_scale does
    scale = torch.maximum(mu.abs().amax(1), 2 * pf.risk_aversion * (diag + (factor**2).sum(2)).amax(1))  # (K,)
    mu, factor, diag = mu / scale[:, None], factor / scale.sqrt()[:, None, None], diag / scale[:, None]
    n = diag.shape[1]
    classic = dataclasses.replace(pf, tc_rate=0.0, solver="torch")
    layer = PortfolioLayer(n, n, classic)
    with torch.no_grad():
        return layer(mu, factor, diag, torch.full_like(diag, 1.0 / n)).numpy()


def risk_parity_weights(returns: np.ndarray, indices: np.ndarray, pf: PortfolioConfig) -> np.ndarray:
    """(K, N) risk parity weights: skfolio's ``RiskBudgeting`` problem (equal budgets, variance of the
    shrunk covariance, long-only, ``w <= max_weight``), all dates at once.

    :func:`data.risk_parity.erc_weights` solves it without the cap.  Where that ERC portfolio keeps
    every weight <= max_weight it is the optimum of skfolio's problem too (the cap is not active);
    at a date where it breaks the cap the optimum is another point, and that date is solved by
    skfolio's ``RiskBudgeting`` itself, the reference, on the same problem (not an approximation).
    """
    _check_long_only("risk parity", pf)
    idx = np.asarray(indices, dtype=np.int64)
    sample = sample_covariances(_windows(returns, idx))  # (K, N, N)
    shrunk = (1 - SHRINKAGE) * sample + SHRINKAGE * torch.diag_embed(torch.diagonal(sample, dim1=1, dim2=2))
    weights = erc_weights(shrunk).numpy()
    capped = np.nonzero(weights.max(1) > _bounds(pf)["max_weights"])[0]
    if capped.size:
        weights[capped] = skfolio_weights("risk parity", returns, idx[capped], pf)
    return weights


def hrp_baseline_weights(returns: np.ndarray, indices: np.ndarray, pf: PortfolioConfig) -> np.ndarray:
    """(K, N) HRP weights, skfolio's ``HierarchicalRiskParity`` (variance, its defaults, the weight
    bounds of ``pf``) as :func:`data.risk_parity.hrp_weights`, one date at a time."""
    _check_long_only("HRP", pf)
    bounds = _bounds(pf)
    cov = sample_covariances(_windows(returns, indices)).numpy()  # (K, N, N)
    return np.vstack([hrp_weights(c, bounds["min_weights"], bounds["max_weights"]) for c in cov])


def baseline_weights(name: str, returns: np.ndarray, indices: np.ndarray, pf: PortfolioConfig) -> np.ndarray:
    """(K, N) weights of baseline ``name`` at decision indices (K,) from daily returns (T, N).

    Every baseline but 1/N takes its fast path (:data:`FAST`), held to :func:`skfolio_weights` by
    the tests: min variance and sample mean-variance :func:`mean_variance_weights`, risk parity
    :func:`risk_parity_weights`, HRP :func:`hrp_baseline_weights`.  1/N is skfolio's.
    """
    if name in ("min variance", "sample mean-variance"):
        return mean_variance_weights(returns, indices, pf, use_mean=name == "sample mean-variance")
    if name == "risk parity":
        return risk_parity_weights(returns, indices, pf)
    if name == "HRP":
        return hrp_baseline_weights(returns, indices, pf)
    return skfolio_weights(name, returns, indices, pf)
