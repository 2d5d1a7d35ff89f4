"""Validation/backtest metrics against an independent pandas computation."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from data.splits import rebalance_indices
from data.scoring import annualised_sharpe, max_drawdown, score_weights
from ray_jobs.steps import chain_solves


def _random_policy(seed=0, k=40, n=6):
    rng = np.random.default_rng(seed)
    w = rng.dirichlet(np.ones(n), size=k)
    r = rng.normal(0.002, 0.02, size=(k, n))
    prev = np.vstack([np.full((1, n), 1 / n), w[:-1]])
    return w, prev, r


def test_sharpe_turnover_and_costs_match_pandas():
    w, prev, r, h, c = *_random_policy(), 5, 0.001
    res = score_weights(np.arange(len(w)), w, prev, r, c, h)
    wf, rf = pd.DataFrame(w), pd.DataFrame(r)
    traded = (wf - wf.shift(1).fillna(1 / w.shape[1])).abs().sum(axis=1)
    net = (wf * rf).sum(axis=1) - c * traded
    expected = net.mean() / net.std() * math.sqrt(252 / h)  # pandas std is ddof=1
    assert res.sharpe == pytest.approx(expected, rel=1e-12)
    assert res.mean_turnover == pytest.approx((traded / 2).mean(), rel=1e-12)
    assert np.allclose(res.net, net.to_numpy(), atol=1e-15)


def test_costs_lower_the_sharpe_and_zero_std_is_zero():
    w, prev, r = _random_policy(1)
    assert score_weights(None, w, prev, r, 0.01, 5).sharpe < score_weights(None, w, prev, r, 0.0, 5).sharpe
    assert annualised_sharpe(np.full(10, 0.01), 5) == 0.0
    with pytest.raises(ValueError, match=">= 2 rebalances"):
        annualised_sharpe(np.array([0.1]), 5)


def test_max_drawdown_matches_pandas():
    net = np.random.default_rng(2).normal(0.0, 0.03, 200)
    equity = pd.Series(np.cumprod(1 + net))
    expected = (1 - equity / equity.cummax().clip(lower=1.0)).max()
    assert max_drawdown(net) == pytest.approx(expected, rel=1e-12)


def test_rebalances_do_not_overlap():
    idx = rebalance_indices(np.arange(100, 150), 5)
    assert np.all(np.diff(idx) == 5) and idx[0] == 100


def test_chained_solves_pass_previous_weights_in_order():
    seen = []

    def solve(mu, f, d, w_prev):
        seen.append(w_prev.clone())
        return torch.softmax(mu.double(), dim=-1)

    mu = torch.randn(4, 3)
    weights, prev = chain_solves(solve, mu, torch.zeros(4, 3, 1), torch.ones(4, 3), tc_rate=0.001)
    assert torch.allclose(seen[0], torch.full((1, 3), 1 / 3, dtype=torch.float64))
    for i in range(1, 4):
        assert torch.equal(seen[i], weights[i - 1 : i]) and torch.equal(prev[i], weights[i - 1])
    batched, prev0 = chain_solves(solve, mu, torch.zeros(4, 3, 1), torch.ones(4, 3), tc_rate=0.0)
    assert torch.allclose(batched, weights) and torch.equal(prev0[1:], batched[:-1])
