"""The embedded synthetic panel: deterministic, cached safely, realistic, with a planted signal."""

from __future__ import annotations

import os
import subprocess
import sys

import cvxpy as cp
import numpy as np
import pytest

from panel_helpers import REPO, SMOKE
from data.build_panel import FEATURE_NAMES
from data.oracle import MeanVarianceProblem, policy_table
from data.panel import file_sha256
from data.synthetic import cache_path, generate, load_synthetic_panel
from data.windows import horizon_returns, prepare
from core.config import load_config

SMALL_N, SMALL_YEARS = 8, 20
FP_SCRIPT = (
    "from data.synthetic import load_synthetic_panel, cache_path; from data.panel import file_sha256; "
    f"p = load_synthetic_panel({SMALL_N}, {SMALL_YEARS}); "
    f"print(p.fingerprint, file_sha256(cache_path({SMALL_N}, {SMALL_YEARS})))"
)


@pytest.fixture(scope="module")
def default_truth():
    return generate(104, 24)  # the default config's panel: 104 factors, synthetic_years 24


def test_identical_bytes_in_another_process(tmp_path):
    panel = load_synthetic_panel(SMALL_N, SMALL_YEARS)
    env = dict(os.environ, XLSTM_PORTFOLIO_CACHE=str(tmp_path / "other_cache"))
    out = subprocess.run([sys.executable, "-c", FP_SCRIPT], cwd=REPO, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    fingerprint, digest = out.stdout.split()
    assert fingerprint == panel.fingerprint
    assert digest == file_sha256(cache_path(SMALL_N, SMALL_YEARS))
    assert (tmp_path / "other_cache" / cache_path(SMALL_N, SMALL_YEARS).name).exists()


@pytest.mark.parametrize("damage", ["truncate", "flip", "no_sidecar"])
def test_damaged_cache_is_regenerated(damage, capsys):
    first = load_synthetic_panel(SMALL_N, SMALL_YEARS)
    path = cache_path(SMALL_N, SMALL_YEARS)
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:1000])
    elif damage == "flip":
        raw = bytearray(path.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        path.write_bytes(bytes(raw))
    else:
        path.with_suffix(".json").unlink()
    capsys.readouterr()
    again = load_synthetic_panel(SMALL_N, SMALL_YEARS)
    assert "unusable" in capsys.readouterr().err
    assert again.fingerprint == first.fingerprint
    assert load_synthetic_panel(SMALL_N, SMALL_YEARS).fingerprint == first.fingerprint  # cache good again


def test_default_config_panel_shape():
    prep = prepare(load_config(SMOKE))
    t_len, n, f = prep.panel.shape
    assert (n, f) == (104, 9) and prep.panel.feature_names == FEATURE_NAMES
    years = (prep.panel.dates[-1] - prep.panel.dates[0]).astype(int) / 365.25
    assert years >= 20 and t_len >= 20 * 252
    assert np.isfinite(prep.panel.features).all()


def test_returns_look_like_factor_returns(default_truth):
    long, _ = default_truth
    r = long["ret"].to_numpy().reshape(-1, 104)  # (T, N)
    ann_vol = r.std(axis=0) * np.sqrt(252)
    assert 0.04 < ann_vol.min() and ann_vol.max() < 0.25
    z = (r - r.mean(0)) / r.std(0)
    assert np.mean(z**4) > 4.5  # fat tails (normal: 3)
    a = np.abs(z)
    lag1 = np.mean([np.corrcoef(a[:-1, i], a[1:, i])[0, 1] for i in range(104)])
    assert lag1 > 0.05  # volatility clustering
    corr = np.corrcoef(r.T)[np.triu_indices(104, 1)]
    assert 0.1 < corr.mean() < 0.8  # common latent factors


def test_truth_is_calibrated(default_truth):
    """Realised horizon returns standardised by the true moments: mean 0, variance 1, also by vol bucket."""
    long, truth = default_truth
    h = 5
    r = long["ret"].to_numpy().reshape(-1, 104)
    t_idx = np.arange(0, len(r) - h, h)  # non-overlapping
    mean, fvar, ivar = truth.moments(h)
    var = (truth.loadings**2 * fvar[t_idx, None, :]).sum(-1) + ivar[t_idx]  # (n_t, N) diag of Sigma
    z = (horizon_returns(r, h)[t_idx] - mean[t_idx]) / np.sqrt(var)
    assert abs(z.mean()) < 0.05 and abs(z.var() - 1) < 0.08
    lo, hi = var <= np.quantile(var, 0.2), var >= np.quantile(var, 0.8)
    assert abs(z[lo].var() - 1) < 0.12 and abs(z[hi].var() - 1) < 0.12  # GARCH forecast, not a constant
    slope = np.polyfit(mean[t_idx].ravel(), horizon_returns(r, h)[t_idx].ravel(), 1)[0]
    assert 0.7 < slope < 1.3  # the planted mean is the true conditional mean


def test_planted_signal_is_visible_in_past_only_features(default_truth):
    long, truth = default_truth
    def corr(name):  # mean over factors of corr(feature, true signal) through time
        feat = long[name].to_numpy().reshape(-1, 104)
        return np.mean([np.corrcoef(feat[:, i], truth.signal[:, i])[0, 1] for i in range(104)])

    assert corr("ret_63d") > 0.2 and corr("mom_252_21") > 0.1 and corr("drawdown_252") > 0.15
    assert abs(corr("vol_21d")) < 0.05  # the signal moves means, not volatility


def test_factor_form_problem_matches_dense_cvxpy(default_truth):
    _, truth = default_truth
    pf = load_config(SMOKE).portfolio
    mean, fvar, ivar = truth.moments(5)
    t, w_prev = 1234, np.full(104, 1 / 104)
    w = MeanVarianceProblem(104, 4, pf).solve(mean[t], truth.loadings * np.sqrt(fvar[t]), np.sqrt(ivar[t]), w_prev)
    x = cp.Variable(104)
    sigma = cp.psd_wrap(truth.covariance(t, 5))
    obj = mean[t] @ x - pf.risk_aversion * cp.quad_form(x, sigma) - pf.tc_rate * cp.norm1(x - w_prev)
    cp.Problem(cp.Maximize(obj), [cp.sum(x) == 1, x >= 0, x <= pf.max_weight]).solve(solver=cp.CLARABEL)
    np.testing.assert_allclose(w, x.value, atol=2e-5)
    assert abs(w.sum() - 1) < 1e-6 and w.min() > -1e-6 and w.max() < pf.max_weight + 1e-6


def test_oracle_beats_equal_weight_on_every_split():
    table = policy_table(load_config(SMOKE), probe=False)
    for split, row in table.items():
        assert row["oracle"].sharpe > 1.5, split
        assert row["oracle"].sharpe > row["equal"].sharpe + 1.0, split


def test_probe_coefficients_are_the_train_split_ridge():
    # The probe's rule (and the feature-skip's start with --skip-init probe): a ridge of the horizon
    # return on [1, features at t] over the train split, penalty 1 on every coefficient. Reference:
    # scikit-learn's Ridge on the same design, built from the raw panel.
    from sklearn.linear_model import Ridge

    from data.oracle import probe_coefficients, probe_means

    prep = prepare(load_config(SMOKE))
    h = prep.data_cfg.prediction_horizon
    r_h = horizon_returns(prep.panel.returns, h)
    train = prep.splits.train
    feats = prep.panel.features[train].astype(np.float64)  # (n_train, N, F)
    mean, std = prep.normalizer.mean, prep.normalizer.std
    z = ((feats - mean) / std).reshape(-1, feats.shape[-1])
    design = np.column_stack([np.ones(len(z)), z])
    ref = Ridge(alpha=1.0, fit_intercept=False, solver="cholesky").fit(design, r_h[train].reshape(-1)).coef_
    beta = probe_coefficients(prep, r_h)
    assert beta.shape == (1 + feats.shape[-1],)
    np.testing.assert_allclose(beta, ref, rtol=1e-4, atol=1e-9)  # float32 features in both; solve round-off
    assert np.abs(beta[1:]).max() > 1e-4  # the planted signal: the rule is not zero
    t = int(prep.splits.test[0])
    x_t = ((prep.panel.features[t] - mean) / std).astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(probe_means(prep, r_h)[t], beta[0] + x_t @ beta[1:], rtol=1e-6, atol=1e-12)
