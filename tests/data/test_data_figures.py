"""The risk and significance figures against independent computations (pandas / numpy by hand,
skfolio's measures) on fixed seeded return series."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from skfolio.measures import cvar as skfolio_cvar
from skfolio.measures import get_drawdowns, semi_deviation

from core.errors import DataError
from data.figures import break_even_cost, cost_sweep, cvar, policy_figures, sharpe_difference
from data.scoring import score_weights

H = 5


def _result(seed: int, k: int = 160, n: int = 5, drift: float = 0.002):
    rng = np.random.default_rng(seed)
    w = rng.dirichlet(np.ones(n), size=k)  # (K, N)
    r = 0.02 * rng.standard_t(4, (k, n)) + drift  # (K, N) fat tails
    prev = np.vstack([np.full((1, n), 1 / n), w[:-1]])
    return score_weights(np.arange(k), w, prev, r, 0.001, H), r


def test_policy_figures_match_pandas_and_skfolio():
    res, _ = _result(0)
    fig = policy_figures(res)
    net = pd.Series(res.net)
    p = 252 / H
    assert fig["annual_return"] == pytest.approx(net.mean() * p, rel=1e-12)
    assert fig["annual_volatility"] == pytest.approx(net.std() * math.sqrt(p), rel=1e-12)
    downside = math.sqrt((net.clip(upper=0) ** 2).sum() / (len(net) - 1))
    assert fig["sortino"] == pytest.approx(net.mean() / downside * math.sqrt(p), rel=1e-12)
    assert fig["sortino"] == pytest.approx(net.mean() / semi_deviation(res.net, min_acceptable_return=0.0) * math.sqrt(p),
                                           rel=1e-12)
    mdd = float(-get_drawdowns(res.net, compounded=True).min())
    assert fig["max_drawdown"] == pytest.approx(mdd, rel=1e-12)
    assert fig["calmar"] == pytest.approx(net.mean() * p / mdd, rel=1e-12)
    assert fig["cvar_95"] == pytest.approx(skfolio_cvar(res.net, beta=0.95), rel=1e-12)
    assert fig["turnover"] == pytest.approx(0.5 * np.abs(res.weights - res.w_prev).sum(1).mean(), rel=1e-12)


def test_cvar_is_the_mean_of_the_worst_five_percent_when_they_are_whole_periods():
    r = np.random.default_rng(1).normal(0, 0.01, 200)  # 5 % of 200 = 10 periods
    assert cvar(r) == pytest.approx(-np.sort(r)[:10].mean(), rel=1e-12)


def test_sharpe_difference_at_lag_0_is_the_delta_method_with_the_sample_covariance():
    a, _ = _result(2)
    b, _ = _result(3, drift=0.0)
    out = sharpe_difference(a.net, b.net, H, lag=0)
    v = np.column_stack([a.net, b.net, a.net**2, b.net**2])
    m = v.mean(0)

    def f(x):
        return x[0] / math.sqrt(x[2] - x[0] ** 2) - x[1] / math.sqrt(x[3] - x[1] ** 2)

    eps = 1e-7
    grad = np.array([(f(m + eps * e) - f(m - eps * e)) / (2 * eps) for e in np.eye(4)])  # numeric gradient
    se = math.sqrt(grad @ np.cov(v.T, ddof=0) @ grad / len(v)) * math.sqrt(252 / H)
    assert out["se"] == pytest.approx(se, rel=1e-5)
    assert out["difference"] == pytest.approx(a.sharpe - b.sharpe, rel=1e-12)
    z = out["difference"] / out["se"]
    assert out["p_value"] == pytest.approx(math.erfc(abs(z) / math.sqrt(2)), rel=1e-9)


def test_sharpe_difference_p_values_reject_at_their_level_and_not_for_identical_series():
    rng = np.random.default_rng(4)
    rejections = 0
    for _ in range(400):  # equal true Sharpe ratios, correlated series: ~5 % rejections at 5 %
        common = rng.normal(0.001, 0.02, 300)
        a = common + rng.normal(0.001, 0.01, 300)
        b = common + rng.normal(0.001, 0.01, 300)
        rejections += sharpe_difference(a, b, H)["p_value"] < 0.05
    assert 0.02 <= rejections / 400 <= 0.09
    same = rng.normal(0.001, 0.02, 300)
    tie = sharpe_difference(same, same, H)
    assert tie["difference"] == 0.0 and tie["p_value"] == 1.0 and tie["se"] == pytest.approx(0.0, abs=1e-12)
    better = same + 0.01  # a large, certain gain
    assert sharpe_difference(better, same, H)["p_value"] < 1e-6
    with pytest.raises(DataError, match="same length|one length"):
        sharpe_difference(same, same[:-1], H)


def test_cost_sweep_and_break_even_cost_recharge_the_same_weights():
    res, r = _result(5)
    n = r.shape[1]
    equal = score_weights(res.indices, np.full_like(res.weights, 1 / n), np.full_like(res.weights, 1 / n), r, 0.001, H)
    sweep = cost_sweep(res)
    traded = np.abs(res.weights - res.w_prev).sum(1)
    for bp in (0, 5, 10, 20):
        net = pd.Series(res.gross - bp * 1e-4 * traded)
        assert sweep[f"sharpe_{bp}bp"] == pytest.approx(net.mean() / net.std() * math.sqrt(252 / H), rel=1e-12)
    gross_gap = sweep["sharpe_0bp"] - equal.sharpe
    c = break_even_cost(res, equal)
    if gross_gap <= 0:
        assert c == 0.0
    else:
        net = pd.Series(res.gross - c * traded)
        assert net.mean() / net.std() * math.sqrt(252 / H) == pytest.approx(equal.sharpe, abs=1e-8)
    # a policy made to beat 1/N before costs breaks even at a positive rate
    boosted = score_weights(res.indices, res.weights, res.w_prev, r + 0.003, 0.001, H)
    equal_b = score_weights(res.indices, equal.weights, equal.w_prev, r + 0.003, 0.001, H)
    rich = type(boosted)(**{**boosted.__dict__, "gross": boosted.gross + 0.004})
    c = break_even_cost(rich, equal_b)
    net = pd.Series(rich.gross - c * traded)
    assert c > 0 and net.mean() / net.std() * math.sqrt(252 / H) == pytest.approx(equal_b.sharpe, abs=1e-8)


def test_figures_table_rows_and_columns():
    from data.figures import figures_table

    res, r = _result(6)
    n = r.shape[1]
    eq = np.full_like(res.weights, 1 / n)
    table = figures_table({"1/N": score_weights(res.indices, eq, eq, r, 0.001, H), "model": res}).set_index("policy")
    assert list(table.columns)[:9] == ["annual_return", "annual_volatility", "sharpe", "sharpe_se", "sortino",
                                       "max_drawdown", "calmar", "cvar_95", "turnover"]
    assert np.isnan(table.loc["1/N", "p_value_vs_1n"]) and 0 <= table.loc["model", "p_value_vs_1n"] <= 1
    assert table.loc["model", "sharpe"] == pytest.approx(res.sharpe)
    with pytest.raises(DataError, match="benchmark '1/N'"):
        figures_table({"model": res})
