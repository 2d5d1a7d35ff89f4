"""The baselines: the fast paths against skfolio (the reference) and the old cvxpy solves, constraints, no look-ahead."""

from __future__ import annotations

import numpy as np
import pytest

from core.config import PortfolioConfig
from core.errors import DataError, SolverError
from data.baselines import (ESTIMATION_DAYS, FAST, SHRINKAGE, DiagonalShrunkCovariance, baseline_weights,
                            baselines_for, skfolio_model, skfolio_weights)
from data.risk_parity import erc_weights
from data.synthetic import simulate
from panel_helpers import make_returns
from references import cvxpy_baseline_weights

LONG_ONLY = PortfolioConfig(constraint="long_only", max_weight=0.2, risk_aversion=1.0, tc_rate=0.0005)
LONG_SHORT = PortfolioConfig(constraint="long_short", leverage=1.6, risk_aversion=1.0, tc_rate=0.0005)


@pytest.fixture(scope="module")
def returns() -> np.ndarray:
    return make_returns(420, 10, seed=5).to_numpy()  # (T, N)


IDX = np.arange(260, 400, 20)
MEAN_VARIANCE = ("min variance", "sample mean-variance")


@pytest.fixture(scope="module")
def factors() -> np.ndarray:
    """(T, 104) correlated returns of the synthetic panel's process (the benchmark's data)."""
    return simulate(104, 330)[0]


FACTOR_IDX = np.array([260, 295, 329])


def _objective(w: np.ndarray, window: np.ndarray, pf, use_mean: bool) -> float:
    """mu'w - gamma w'Sigma w of one date, Sigma shrunk towards its diagonal (to be maximised)."""
    s = np.cov(window, rowvar=False)
    cov = (1 - SHRINKAGE) * s + SHRINKAGE * np.diag(np.diag(s))
    return (window.mean(0) @ w if use_mean else 0.0) - pf.risk_aversion * w @ cov @ w


@pytest.mark.parametrize("pf", [LONG_ONLY, LONG_SHORT], ids=["long_only", "long_short"])
@pytest.mark.parametrize("name", MEAN_VARIANCE)
def test_fast_path_matches_skfolio(returns, pf, name):
    """The batched torch solve against skfolio's MeanRisk fits: weights within 1e-4 (skfolio's
    Clarabel stops ~1e-4 short on the flat min-variance objective; measured 8e-5 on 104 factors), and
    the fast path's objective never worse than skfolio's (up to 1e-9 of it, round-off)."""
    fast = baseline_weights(name, returns, IDX, pf)
    ref = skfolio_weights(name, returns, IDX, pf)
    np.testing.assert_allclose(fast, ref, atol=1e-4, err_msg=f"{name} ({pf.constraint})")
    use_mean = name == "sample mean-variance"
    for k, t in enumerate(IDX):
        window = returns[t - ESTIMATION_DAYS + 1: t + 1]
        f, r = _objective(fast[k], window, pf, use_mean), _objective(ref[k], window, pf, use_mean)
        assert f >= r - 1e-9 * abs(r), (name, pf.constraint, k, f, r)


def test_fast_path_matches_skfolio_on_104_factors():
    """The benchmark's size, long-only with a binding cap (0.1 on 104 factors)."""
    pf = PortfolioConfig(constraint="long_only", max_weight=0.1, risk_aversion=1.0, tc_rate=0.0005)
    big = make_returns(300, 104, seed=9).to_numpy()
    idx = np.array([260, 280, 299])
    for name in MEAN_VARIANCE:
        np.testing.assert_allclose(baseline_weights(name, big, idx, pf), skfolio_weights(name, big, idx, pf),
                                   atol=1e-4, err_msg=name)


@pytest.mark.parametrize("pf", [LONG_ONLY, LONG_SHORT], ids=["long_only", "long_short"])
@pytest.mark.parametrize("name,use_mean", [("min variance", False), ("sample mean-variance", True)])
def test_skfolio_mean_risk_matches_the_old_cvxpy_solve(returns, pf, name, use_mean):
    new = baseline_weights(name, returns, IDX, pf)
    old = cvxpy_baseline_weights(returns, IDX, 5, pf, use_mean)
    np.testing.assert_allclose(new, old, atol=5e-5, err_msg=f"{name} ({pf.constraint})")


def test_every_long_only_baseline_is_feasible_and_sees_only_the_past(returns):
    for name in baselines_for(LONG_ONLY):
        w = baseline_weights(name, returns, IDX, LONG_ONLY)
        np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-8)
        assert w.min() >= -1e-8 and w.max() <= 0.2 + 1e-6, name
        later = returns.copy()
        later[IDX[2] + 1:] *= -3.0  # returns after the third decision change
        w_later = baseline_weights(name, later, IDX[:3], LONG_ONLY)
        # equal up to the solver's round-off (risk parity moves ~3e-6 between two fits of one window
        # held in two arrays): later returns (times -3) never enter
        np.testing.assert_allclose(w_later, w[:3], atol=1e-5, err_msg=name)
    equal = baseline_weights("1/N", returns, IDX, LONG_ONLY)
    np.testing.assert_array_equal(equal, np.full_like(equal, 0.1))


def test_risk_parity_equalises_risk_contributions_when_no_bound_binds(returns):
    loose = PortfolioConfig(constraint="long_only", max_weight=1.0, risk_aversion=1.0, tc_rate=0.0)
    (w,) = baseline_weights("risk parity", returns, IDX[:1], loose)
    window = returns[IDX[0] - ESTIMATION_DAYS + 1: IDX[0] + 1]
    s = np.cov(window, rowvar=False)
    cov = 0.8 * s + 0.2 * np.diag(np.diag(s))
    contributions = w * (cov @ w)
    np.testing.assert_allclose(contributions / contributions.sum(), 0.1, atol=1e-4)


def test_refusals(returns):
    with pytest.raises(DataError, match="252 days of history"):
        baseline_weights("min variance", returns, np.array([100]), LONG_ONLY)
    for name in ("risk parity", "HRP"):
        with pytest.raises(SolverError, match="long-only"):
            baseline_weights(name, returns, IDX, LONG_SHORT)
    assert baselines_for(LONG_SHORT) == ("1/N", "min variance", "sample mean-variance")


def _shrunk(window: np.ndarray) -> np.ndarray:
    return DiagonalShrunkCovariance().fit(window).covariance_


def _risk_contributions(w: np.ndarray, window: np.ndarray) -> np.ndarray:
    cov = _shrunk(window)
    return w * (cov @ w)


# Clarabel at 1e-12 reports "may be inaccurate" on some windows: it stops at its own precision,
# which the 1e-6 tolerance below is about (measured 2.4e-7 on 10 assets, 3e-9 on 104)
TIGHT = {"tol_gap_abs": 1e-12, "tol_gap_rel": 1e-12, "tol_feas": 1e-12}


@pytest.mark.filterwarnings("ignore:Solution may be inaccurate")
@pytest.mark.parametrize("case", ["10 assets", "104 factors"])
def test_risk_parity_fast_path_matches_skfolio(returns, factors, case):
    """Newton's ERC against skfolio's RiskBudgeting where the cap does not bind: risk contributions
    equal to 1e-12 (numpy, the ERC condition), weights within 1e-6 of a tight skfolio solve and
    within 1e-5 of the production reference (its Clarabel tolerances leave it up to 5e-6 away,
    its own risk contributions up to 1e-4 apart)."""
    data, idx = (returns, IDX) if case == "10 assets" else (factors, FACTOR_IDX)
    pf = LONG_ONLY if case == "10 assets" else PortfolioConfig(constraint="long_only", max_weight=0.1)
    fast = baseline_weights("risk parity", data, idx, pf)
    assert fast.max() < pf.max_weight  # the cap does not bind: every date took the Newton path
    tight = []
    for k, t in enumerate(idx):
        window = data[t - ESTIMATION_DAYS + 1: t + 1]
        rc = _risk_contributions(fast[k], window)
        np.testing.assert_allclose(rc / rc.mean(), 1.0, rtol=0, atol=1e-12, err_msg=f"date {k}")
        tight.append(skfolio_model("risk parity", pf).set_params(solver_params=TIGHT).fit(window).weights_)
    np.testing.assert_allclose(fast, np.vstack(tight), rtol=0, atol=1e-6)
    np.testing.assert_allclose(fast, skfolio_weights("risk parity", data, idx, pf), rtol=0, atol=1e-5)


def test_risk_parity_where_the_cap_binds_is_skfolios_solve(returns):
    """A cap of 0.113 on 10 assets: the ERC portfolio breaks it on some dates and not on others.
    The dates where it does must be skfolio's RiskBudgeting solve (with the cap binding), the
    others Newton's ERC."""
    pf = PortfolioConfig(constraint="long_only", max_weight=0.113)
    windows = [returns[t - ESTIMATION_DAYS + 1: t + 1] for t in IDX]
    erc = erc_weights(np.stack([_shrunk(w) for w in windows])).numpy()
    breaks = erc.max(1) > pf.max_weight
    assert breaks.any() and not breaks.all(), erc.max(1)  # the case this test is about
    fast = baseline_weights("risk parity", returns, IDX, pf)
    ref = skfolio_weights("risk parity", returns, IDX, pf)
    np.testing.assert_array_equal(fast[breaks], ref[breaks])
    np.testing.assert_allclose(fast[breaks].max(1), pf.max_weight, atol=1e-6)  # the cap binds there
    np.testing.assert_allclose(fast[~breaks], erc[~breaks], rtol=0, atol=1e-12)
    np.testing.assert_allclose(fast, ref, rtol=0, atol=1e-5)


def test_erc_refuses_a_covariance_without_positive_variances():
    cov = np.stack([np.eye(3), np.diag([1.0, 0.0, 1.0])])
    with pytest.raises(SolverError, match=r"covariance\(s\) \[1\]"):
        erc_weights(cov)


@pytest.mark.parametrize("case", ["10 assets", "104 factors"])
def test_hrp_fast_path_is_skfolios_hrp(returns, factors, case):
    """Own clustering + bisection against the stock HierarchicalRiskParity to 1e-12, with the
    weight bounds binding in the bisection and not."""
    data, idx = (returns, IDX) if case == "10 assets" else (factors, FACTOR_IDX)
    binding = 0.115 if case == "10 assets" else 0.012
    for cap in (binding, None):
        pf = PortfolioConfig(constraint="long_only", max_weight=cap)
        fast = baseline_weights("HRP", data, idx, pf)
        np.testing.assert_allclose(fast, skfolio_weights("HRP", data, idx, pf), rtol=0, atol=1e-12, err_msg=str(cap))
        if cap is not None:  # the bisection's bounds were applied
            assert np.isclose(fast.max(), cap, rtol=0, atol=1e-12), fast.max()
        else:  # ... and without the cap they would break it
            assert fast.max() > binding, fast.max()
