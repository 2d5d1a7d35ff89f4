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
fast path where skfolio was the backtest's bottleneck (``benchmarks.baselines``, docs/performance.md):
min variance and mean-variance in one batch of the portfolio layer's torch solver, HRP as
:class:`VarianceHRP`; risk parity is skfolio's fit as is.

Inverse volatility is in :mod:`ray_jobs.backtest`: skfolio's ``InverseVolatility`` takes no weight
bounds, so the ``max_weight`` cap is applied there by hand (:func:`ray_jobs.backtest.cap_weights`).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from skfolio.exceptions import OptimizationError
from skfolio.measures import RiskMeasure
from skfolio.moments import BaseCovariance, EmpiricalCovariance
from skfolio.optimization import EqualWeighted, HierarchicalRiskParity, MeanRisk, ObjectiveFunction, RiskBudgeting
from skfolio.prior import EmpiricalPrior

from core.config import PortfolioConfig
from core.errors import DataError, SolverError

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


class VarianceHRP(HierarchicalRiskParity):
    """skfolio's HRP with the variance of a cluster's weights as ``w' Sigma w`` in numpy.

    skfolio's own ``_risk`` builds a ``Portfolio`` (input checks, returns, costs) for each of the
    ~3N risk evaluations of a fit.  With variance as the risk measure and no costs or fees, that
    portfolio's risk is ``w' Sigma w`` of the prior's covariance; the clustering, the seriation and
    the bisection with its weight bounds are skfolio's.  The tests hold it to the stock estimator.
    """

    def _risk(self, weights, return_distribution) -> float:
        if self.risk_measure != RiskMeasure.VARIANCE:  # pragma: no cover - only variance is used here
            return super()._risk(weights, return_distribution)
        return float(weights @ return_distribution.covariance @ weights)


def _prior() -> EmpiricalPrior:
    return EmpiricalPrior(covariance_estimator=DiagonalShrunkCovariance())


def _bounds(pf: PortfolioConfig) -> dict:
    if pf.constraint == "long_only":
        return {"min_weights": 0.0, "max_weights": 1.0 if pf.max_weight is None else pf.max_weight}
    return {"min_weights": None, "max_weights": None,
            "max_long": (pf.leverage + 1) / 2, "max_short": (pf.leverage - 1) / 2}


def skfolio_model(name: str, pf: PortfolioConfig, fast: bool = False):
    """An unfitted skfolio estimator of one baseline under the constraints of ``pf``; ``fast``:
    :class:`VarianceHRP` for HRP (the others are the same either way)."""
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
    if pf.constraint != "long_only":
        raise SolverError(f"the {name!r} baseline is long-only (skfolio's {name} has no leverage budget); "
                          "it is not run for portfolio.constraint = 'long_short'.")
    if name == "risk parity":
        return RiskBudgeting(risk_measure=RiskMeasure.VARIANCE, prior_estimator=_prior(), solver_params=SOLVER_PARAMS,
                             **bounds)
    if name == "HRP":
        if fast:  # the sample covariance of E > N days is PSD: no nearest-PD repair (two eigendecompositions)
            prior = EmpiricalPrior(covariance_estimator=EmpiricalCovariance(nearest=False))
            return VarianceHRP(risk_measure=RiskMeasure.VARIANCE, prior_estimator=prior, **bounds)
        return HierarchicalRiskParity(risk_measure=RiskMeasure.VARIANCE, **bounds)
    raise DataError(f"unknown baseline {name!r}; one of {list(BASELINES)}.")


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


def skfolio_weights(name: str, returns: np.ndarray, indices: np.ndarray, pf: PortfolioConfig,
                    fast: bool = False) -> np.ndarray:
    """(K, N) weights of baseline ``name`` by skfolio's estimator, one fit per date (the reference;
    ``fast``: :class:`VarianceHRP` for HRP)."""
    check_history(indices)
    rows = []
    for t in np.asarray(indices):
        window = returns[int(t) - ESTIMATION_DAYS + 1: int(t) + 1]  # (E, N), dates <= t only
        try:
            # a fresh estimator per date: a refitted one may start from its previous solution
            rows.append(np.asarray(skfolio_model(name, pf, fast).fit(window).weights_, dtype=np.float64))
        except OptimizationError as exc:
            raise SolverError(f"the {name} baseline (skfolio) failed at decision index {int(t)}: {exc}") from None
    return np.vstack(rows)


FAST = ("min variance", "sample mean-variance")
"""Baselines with a fast path (:func:`mean_variance_weights`); the others are skfolio's own."""


def mean_variance_weights(returns: np.ndarray, indices: np.ndarray, pf: PortfolioConfig, use_mean: bool) -> np.ndarray:
    """(K, N) min variance (``use_mean`` False) or sample mean-variance weights, all dates in one batch.

    The problem of skfolio's ``MeanRisk`` above (covariance shrunk towards its diagonal, no cost
    term) written in the portfolio layer's factor form, ``Sigma = B B^T + diag(d)`` with
    ``B = sqrt((1 - s) / (E - 1)) * centred window^T`` (N, E) and ``d = s * var``, and solved for every
    decision date at once by the layer's exact torch solver (the constraints of
    :mod:`portfolio.constraints`).  Min variance is ``mu = 0``; any risk aversion gives its optimum.
    Measured (``benchmarks.baselines``, docs/performance.md): 10-20x faster than one skfolio fit per
    date on 104 factors; the tests hold it to skfolio's weights within 1e-4.
    """
    import torch

    from portfolio.layer import PortfolioLayer

    check_history(indices)
    idx = np.asarray(indices, dtype=np.int64)
    offsets = np.arange(-ESTIMATION_DAYS + 1, 1)
    windows = np.asarray(returns, dtype=np.float64)[idx[:, None] + offsets]  # (K, E, N), dates <= t
    centred = windows - windows.mean(axis=1, keepdims=True)
    factor = np.sqrt((1 - SHRINKAGE) / (ESTIMATION_DAYS - 1)) * centred.transpose(0, 2, 1)  # (K, N, E)
    diag = SHRINKAGE * centred.var(axis=1, ddof=1)  # (K, N)
    mu = windows.mean(axis=1) if use_mean else np.zeros(diag.shape)  # (K, N)
    # the objective over its largest coefficient (same minimiser; daily variances ~1e-4 would
    # leave the solver's absolute tolerances loose), as portfolio.cvx.objective_scale does
    scale = np.maximum(np.abs(mu).max(1), 2 * pf.risk_aversion * (diag + (factor**2).sum(2)).max(1))  # (K,)
    mu, factor, diag = mu / scale[:, None], factor / np.sqrt(scale)[:, None, None], diag / scale[:, None]
    classic = dataclasses.replace(pf, tc_rate=0.0, solver="torch")
    layer = PortfolioLayer(diag.shape[1], ESTIMATION_DAYS, classic)
    prev = np.full(diag.shape, 1.0 / diag.shape[1])
    with torch.no_grad():
        w = layer(*(torch.from_numpy(np.ascontiguousarray(a)) for a in (mu, factor, diag, prev)))
    return w.numpy()


def baseline_weights(name: str, returns: np.ndarray, indices: np.ndarray, pf: PortfolioConfig) -> np.ndarray:
    """(K, N) weights of baseline ``name`` at decision indices (K,) from daily returns (T, N).

    Min variance and sample mean-variance take the fast path (:func:`mean_variance_weights`, held
    to :func:`skfolio_weights` by the tests); HRP is skfolio's with a cheaper risk evaluation
    (:class:`VarianceHRP`); 1/N and risk parity are skfolio's fits (a risk parity problem built once
    and re-solved was slower: its 104 x 252 covariance parameter makes cvxpy's re-solve ~0.4 s).
    """
    if name in FAST:
        return mean_variance_weights(returns, indices, pf, use_mean=name == "sample mean-variance")
    return skfolio_weights(name, returns, indices, pf, fast=True)
