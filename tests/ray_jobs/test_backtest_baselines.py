"""The backtest's baselines without a trained ensemble: probe, inverse volatility, Sharpe standard error.

Each is checked against an independent numpy / scipy / cvxpy recomputation on seeded data.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import brentq

from data import compute_features, prepare, write_panel
from data.build_panel import WARMUP_DAYS
from data.oracle import probe_weights
from data.scoring import sharpe_standard_error
from data.splits import rebalance_indices
from data.windows import horizon_returns
from core.config import PortfolioConfig
from core.errors import ConfigError, DataError, PortfolioTrainerError
from portfolio.cvx import solve_full_cov
from panel_helpers import make_returns, small_cfg
from ray_jobs.backtest import ESTIMATION_DAYS, cap_weights, inverse_volatility_weights

MAX_WEIGHT = 0.25  # binds on the 6-factor panel (1/N = 0.167)


# --- Sharpe standard error ------------------------------------------------------------------


def test_sharpe_standard_error_matches_numpy():
    net = np.random.default_rng(11).normal(0.003, 0.02, 150)
    h = 5
    s = net.mean() / net.std(ddof=1)  # per-period Sharpe
    expected = np.sqrt((1 + s**2 / 2) / net.size) * np.sqrt(252 / h)
    assert sharpe_standard_error(net, h) == pytest.approx(expected, rel=1e-12)
    # constant returns: Sharpe 0 by convention, so SE = sqrt(1 / n) annualised
    assert sharpe_standard_error(np.full(40, 0.01), h) == pytest.approx(math.sqrt(1 / 40 * 252 / h), rel=1e-12)
    with pytest.raises(ValueError, match=">= 2 rebalances"):
        sharpe_standard_error(np.array([0.01]), h)


# --- inverse volatility ---------------------------------------------------------------------


def _returns(t_len=320, n=6, seed=3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vols = np.array([0.004, 0.008, 0.01, 0.012, 0.015, 0.02])[:n]
    return rng.normal(0.0003, 1.0, (t_len, n)) * vols  # (T, N), distinct vols


def _capped_reference(v: np.ndarray, cap: float) -> np.ndarray:
    """min(cap, c v) summing to 1, c found by root finding (not by clipping)."""
    c = brentq(lambda c: np.minimum(cap, c * v).sum() - 1.0, 0.0, 1.0 / v.min())
    return np.minimum(cap, c * v)


def test_inverse_volatility_matches_numpy_and_uses_no_later_returns():
    r = _returns()
    idx = np.array([ESTIMATION_DAYS - 1, 270, 300])
    pf = PortfolioConfig(constraint="long_only", max_weight=None)
    w = inverse_volatility_weights(r, idx, pf)
    for k, t in enumerate(idx):
        inv = 1.0 / r[t - ESTIMATION_DAYS + 1: t + 1].std(axis=0, ddof=1)
        np.testing.assert_allclose(w[k], inv / inv.sum(), rtol=1e-10)
    later = r.copy()
    later[idx[-1] + 1:] *= 5.0  # returns after the last decision
    np.testing.assert_array_equal(inverse_volatility_weights(later, idx, pf), w)
    earlier = r.copy()
    earlier[idx[-1], 0] = 0.2  # a return on the decision date itself enters
    assert not np.allclose(inverse_volatility_weights(earlier, idx, pf)[-1], w[-1])


def test_inverse_volatility_respects_max_weight():
    r = _returns()
    idx = np.array([280, 300])
    w = inverse_volatility_weights(r, idx, PortfolioConfig(constraint="long_only", max_weight=MAX_WEIGHT))
    for k, t in enumerate(idx):
        inv = 1.0 / r[t - ESTIMATION_DAYS + 1: t + 1].std(axis=0, ddof=1)
        assert (inv / inv.sum()).max() > MAX_WEIGHT  # the bound binds here
        np.testing.assert_allclose(w[k], _capped_reference(inv / inv.sum(), MAX_WEIGHT), atol=1e-12)
    assert np.allclose(w.sum(axis=1), 1.0, atol=1e-12) and w.max() <= MAX_WEIGHT + 1e-12 and w.min() > 0
    # long_short: ||w||_1 = 1 <= leverage already, max_weight does not apply
    ls = inverse_volatility_weights(r, idx, PortfolioConfig(constraint="long_short", max_weight=MAX_WEIGHT))
    assert ls.max() > MAX_WEIGHT


def test_inverse_volatility_needs_a_year_of_history_and_varying_returns():
    r = _returns()
    pf = PortfolioConfig(constraint="long_only", max_weight=None)
    with pytest.raises(PortfolioTrainerError, match=f"need {ESTIMATION_DAYS} days of history"):
        inverse_volatility_weights(r, np.array([ESTIMATION_DAYS - 2]), pf)
    flat = r.copy()
    flat[:, 2] = 0.001
    with pytest.raises(DataError, match="decision index 300: a factor's returns are constant"):
        inverse_volatility_weights(flat, np.array([300]), pf)


def test_cap_weights_matches_root_finding_and_refuses_an_impossible_cap():
    v = np.random.default_rng(5).dirichlet(np.full(10, 0.5))
    for cap in (0.1, 0.15, 0.3, 1.0):
        got = cap_weights(v, cap)
        np.testing.assert_allclose(got, _capped_reference(v, cap), atol=1e-12)
        assert got.sum() == pytest.approx(1.0, abs=1e-12) and got.max() <= cap + 1e-12
    with pytest.raises(ConfigError, match=r"max_weight = 0.05 with n_assets = 10 .* portfolio.max_weight >= 0.1"):
        cap_weights(v, 0.05)


# --- probe ----------------------------------------------------------------------------------


def _prepared(tmp_path, returns_wide: pd.DataFrame, name: str):
    path = tmp_path / f"{name}.parquet"
    write_panel(compute_features(returns_wide), path)
    cfg = small_cfg(f"portfolio.max_weight={MAX_WEIGHT}")
    return prepare(cfg, str(path)), cfg


def _probe_reference(prep, t: int, w_prev: np.ndarray, pf) -> np.ndarray:
    """The probe at t rebuilt with other numerics: lstsq ridge, np.cov risk model, dense solve."""
    h = prep.data_cfg.prediction_horizon
    x = (prep.panel.features.astype(np.float64) - prep.normalizer.mean) / prep.normalizer.std  # (T, N, F)
    train = prep.splits.train
    design = np.column_stack([np.ones(len(train) * x.shape[1]), x[train].reshape(-1, x.shape[-1])])
    target = horizon_returns(prep.panel.returns, h)[train].reshape(-1)
    k = design.shape[1]  # ridge (penalty 1, intercept included) as least squares on augmented rows
    beta = np.linalg.lstsq(np.vstack([design, np.eye(k)]), np.concatenate([target, np.zeros(k)]), rcond=None)[0]
    mu = beta[0] + x[t] @ beta[1:]
    past = prep.panel.returns[max(0, t - 251): t + 1]  # (n_obs, N)
    market = past.mean(axis=1)
    cov = np.cov(np.column_stack([past, market]), rowvar=False)  # (N + 1, N + 1), ddof 1
    b = cov[:-1, -1] / cov[-1, -1]
    resid = np.diag(cov)[:-1] - b**2 * cov[-1, -1]
    sigma = h * (cov[-1, -1] * np.outer(b, b) + np.diag(resid))
    return solve_full_cov(mu, sigma, w_prev, pf)


def test_probe_weights_are_feasible_and_match_an_independent_probe(tmp_path):
    prep, cfg = _prepared(tmp_path, make_returns(), "panel")
    pf = cfg.portfolio
    reb = rebalance_indices(prep.splits.test, cfg.data.prediction_horizon)
    w = probe_weights(prep, reb, pf)
    assert w.shape == (len(reb), cfg.data.num_factors)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-6)
    assert w.min() >= -1e-6 and w.max() <= MAX_WEIGHT + 1e-6
    assert w.max() > MAX_WEIGHT - 1e-4  # the bound is active somewhere: the test sees the constraint
    prev = np.vstack([np.full(w.shape[1], 1 / w.shape[1]), w[:-1]])  # chained from 1/N
    for k in (0, len(reb) - 1):
        np.testing.assert_allclose(w[k], _probe_reference(prep, int(reb[k]), prev[k], pf), atol=1e-4)


def test_probe_weights_use_no_data_after_the_decision(tmp_path):
    wide = make_returns()
    prep, cfg = _prepared(tmp_path, wide, "panel")
    reb = rebalance_indices(prep.splits.test, cfg.data.prediction_horizon)[:-3]
    w = probe_weights(prep, reb, cfg.portfolio)
    last_row = WARMUP_DAYS + int(reb[-1])  # the last decision date's row in the wide table
    later = wide.copy()
    later.iloc[last_row + 1:] = later.iloc[last_row + 1:].to_numpy()[::-1] * 3.0  # new returns after it
    prep_later, _ = _prepared(tmp_path, later, "later")
    assert not np.array_equal(prep_later.panel.returns, prep.panel.returns)
    np.testing.assert_array_equal(probe_weights(prep_later, reb, cfg.portfolio), w)
    # control: returns after the previous decision, up to the last one, do enter.  The probe's
    # weights sit at a vertex (four at max_weight), so it takes a jump in a held factor's vol.
    on_date = wide.copy()
    held = int(np.argmax(w[-1]))
    days = slice(WARMUP_DAYS + int(reb[-2]) + 1, last_row + 1)
    on_date.iloc[days, held] = np.resize([0.15, -0.15], days.stop - days.start)
    prep_on, _ = _prepared(tmp_path, on_date, "on_date")
    changed = probe_weights(prep_on, reb, cfg.portfolio)
    np.testing.assert_array_equal(changed[:-1], w[:-1])
    assert np.abs(changed[-1] - w[-1]).max() > 1e-4


def test_probe_weights_refuse_decisions_inside_the_training_labels(tmp_path):
    prep, cfg = _prepared(tmp_path, make_returns(), "panel")
    t = int(prep.splits.train[-1])
    with pytest.raises(DataError, match=f"decision index {t} is not after the train split's last label day"):
        probe_weights(prep, np.array([t]), cfg.portfolio)


def test_probe_weights_follow_the_constraint(tmp_path):
    prep, cfg = _prepared(tmp_path, make_returns(), "panel")
    ls = dataclasses.replace(cfg.portfolio, constraint="long_short", leverage=1.5)
    reb = rebalance_indices(prep.splits.test, cfg.data.prediction_horizon)
    w = probe_weights(prep, reb, ls)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-6)
    assert np.abs(w).sum(axis=1).max() <= 1.5 + 1e-6
