"""One scorer, one result type: the reference policies of data.oracle are scored and reported like the model."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from data.oracle import run_policy
from data.scoring import PolicyResult, score_weights

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("core", "data", "model", "ray_jobs", "benchmarks", "portfolio")


def test_the_project_defines_one_policy_result():
    defined = [
        str(path.relative_to(ROOT))
        for package in PACKAGES if (ROOT / package).is_dir()
        for path in sorted((ROOT / package).rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ClassDef) and node.name == "PolicyResult"
    ]
    assert defined == ["data/scoring.py"]


def test_run_policy_returns_the_scorers_result():
    rng = np.random.default_rng(0)
    r_horizon = rng.normal(0.001, 0.02, size=(60, 5))  # (T, N)
    rebalances = np.arange(0, 60, 5)
    targets = rng.dirichlet(np.ones(5), size=60)  # (T, N): the policy's weights at each date
    result = run_policy(lambda t, w_prev: targets[t], r_horizon, rebalances, 0.001, 5)
    assert isinstance(result, PolicyResult)
    w_prev = np.vstack([np.full((1, 5), 0.2), targets[rebalances][:-1]])  # starts from 1/N
    expected = score_weights(rebalances, targets[rebalances], w_prev, r_horizon[rebalances], 0.001, 5)
    assert result.sharpe == pytest.approx(expected.sharpe, rel=1e-12)
    assert result.mean_turnover == pytest.approx(expected.mean_turnover, rel=1e-12)
    assert result.n_rebalances == len(rebalances)
    np.testing.assert_allclose(result.net, expected.net, rtol=0, atol=1e-15)
