"""The skfolio baselines: the old hand-written cvxpy solves where both exist, constraints, no look-ahead."""

from __future__ import annotations

import numpy as np
import pytest

from core.config import PortfolioConfig
from core.errors import DataError, SolverError
from data.baselines import ESTIMATION_DAYS, baseline_weights, baselines_for
from panel_helpers import make_returns
from references import cvxpy_baseline_weights

LONG_ONLY = PortfolioConfig(constraint="long_only", max_weight=0.2, risk_aversion=1.0, tc_rate=0.0005)
LONG_SHORT = PortfolioConfig(constraint="long_short", leverage=1.6, risk_aversion=1.0, tc_rate=0.0005)


@pytest.fixture(scope="module")
def returns() -> np.ndarray:
    return make_returns(420, 10, seed=5).to_numpy()  # (T, N)


IDX = np.arange(260, 400, 20)


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
    with pytest.raises(SolverError, match="long-only"):
        baseline_weights("HRP", returns, IDX, LONG_SHORT)
    assert baselines_for(LONG_SHORT) == ("1/N", "min variance", "sample mean-variance")
