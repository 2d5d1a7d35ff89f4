"""portfolio.constraints: the one statement of the constraints, checked against each use.

The cvxpy constraint set against the solution check, the feasibility rule against the layer
and the backtest, the solution check's messages, the one-line description in the report.
"""

from __future__ import annotations

import types

import cvxpy as cp
import numpy as np
import pandas as pd
import pytest
import torch

from core.config import PortfolioConfig
from core.errors import SolverError
from portfolio.constraints import check_feasible, check_solution, cvxpy_constraints, describe, held_by_bound


def test_check_solution_names_each_violation():
    cfg = PortfolioConfig(max_weight=0.5, feasibility_tol=1e-6)
    good = np.array([[0.5, 0.3, 0.2], [0.2, 0.3, 0.5]])
    prev = np.full((2, 3), 1 / 3)
    check_solution(good, prev, cfg)
    cases = [
        (np.array([[0.5, 0.3, 0.2], [np.nan, 0.5, 0.5]]), "batch element 1 .*not finite"),
        (np.array([[0.5, 0.3, 0.2], [0.0, 0.0, 0.0]]), "batch element 1 .*all weights are ~0"),
        (np.array([[0.5, 0.3, 0.3], [0.2, 0.3, 0.5]]), "batch element 0 .*budget violated: sum\\(w\\) = 1.1"),
        (np.array([[0.5, 0.3, 0.2], [-0.1, 0.6, 0.5]]), "batch element 1 .*min\\(w\\) = -1.000e-01"),
        (np.array([[0.6, 0.2, 0.2], [0.2, 0.3, 0.5]]), "batch element 0 .*max_weight violated"),
    ]
    for weights, pattern in cases:
        with pytest.raises(SolverError, match=pattern):
            check_solution(weights, prev, cfg)
    with pytest.raises(SolverError, match="leverage violated: sum \\|w\\| = 2.2"):
        check_solution(torch.tensor([1.6, -0.6, 0.0]), None, PortfolioConfig(constraint="long_short", leverage=2.0))


@pytest.mark.parametrize("cfg", [PortfolioConfig(max_weight=0.3), PortfolioConfig(constraint="long_short", leverage=1.5)],
                         ids=["long_only", "long_short"])
def test_cvxpy_constraints_give_weights_that_pass_the_solution_check(cfg):
    """The most extreme weights cvxpy allows (max of one asset's weight) pass check_solution,
    and a step past the bound fails it: the solver's set and the check agree."""
    w = cp.Variable(5)
    problem = cp.Problem(cp.Maximize(w[0] - w[1]), cvxpy_constraints(w, cfg.constraint, cfg.max_weight, cfg.leverage))
    problem.solve(solver=cp.CLARABEL)
    best = np.asarray(w.value)
    check_solution(best, None, cfg)
    expected = [0.3, 0.0] if cfg.constraint == "long_only" else [1.25, -0.25]
    np.testing.assert_allclose(best[:2], expected, atol=1e-6)
    past = best.copy()
    past[0] += 0.01  # more of the asset at its bound, less of the largest other one: budget kept
    past[2 + int(np.argmax(best[2:]))] -= 0.01
    with pytest.raises(SolverError, match="max_weight violated" if cfg.constraint == "long_only" else "leverage violated"):
        check_solution(past, None, cfg)


def test_infeasible_constraint_sets_name_the_value_and_the_fix():
    with pytest.raises(SolverError, match=r"max_weight = 0.05 with n_assets = 10 .* portfolio.max_weight >= 0.1 \(or null\)"):
        check_feasible(True, 0.05, 1.0, 10)
    with pytest.raises(SolverError, match=r"leverage = 0.9 < 1.* Set portfolio.leverage >= 1"):
        check_feasible(False, None, 0.9, 10)
    check_feasible(True, 0.1, 1.0, 10)  # max_weight * n = 1 exactly: feasible (all at the bound)
    check_feasible(False, None, 1.0, 10)


def test_held_by_bound_is_zero_or_max_weight_for_long_only_only():
    value = torch.tensor([[0.0, 0.2, 0.1, 0.3]])
    assert held_by_bound(value, True, 0.2).tolist() == [[True, True, False, False]]
    assert held_by_bound(value, True, None).tolist() == [[True, False, False, False]]
    assert held_by_bound(value, False, None).tolist() == [[False, False, False, False]]


def test_describe_shows_max_weight_for_long_only_and_leverage_for_long_short_only():
    """The defect: a long_only report header said "leverage 2.0" (the unused default)."""
    assert describe(PortfolioConfig(constraint="long_only", max_weight=0.1, leverage=2.0)) == "long_only (max weight 0.1)"
    assert describe(PortfolioConfig(constraint="long_only")) == "long_only (max weight none)"
    assert describe(PortfolioConfig(constraint="long_short", leverage=2.0, max_weight=0.3)) == "long_short (leverage 2)"


def test_backtest_report_header_uses_the_one_description(tmp_path):
    from ray_jobs.backtest import write_report

    for pf, shown, hidden in [(PortfolioConfig(max_weight=0.25, leverage=2.0), "long_only (max weight 0.25)", "leverage"),
                              (PortfolioConfig(constraint="long_short", leverage=1.5), "long_short (leverage 1.5)",
                               "max weight")]:
        ensemble = types.SimpleNamespace(cfg=types.SimpleNamespace(portfolio=pf), seeds=[1, 2])
        inputs = types.SimpleNamespace(ensemble=ensemble, horizon=5,
                                       panel=types.SimpleNamespace(dates=np.array(["2020-01-02", "2020-01-09"])))
        table = pd.DataFrame([{"policy": "1/N", "sharpe": 0.5}])
        header = write_report(tmp_path, tmp_path / "exp", table, inputs, np.array([0, 1])).read_text().split("\n\n")[1]
        assert f"constraint {shown};" in header and hidden not in header
