"""PortfolioLayer: both backends against cvxpy + Clarabel solved directly, feasibility, failures.

The reference is portfolio.cvx.solve_reference (Clarabel on the same problem, objective
scaled, tol 1e-12; it agrees with the exact torch solve to ~1e-8).  Backend-specific gradient
checks against finite differences are in test_torch_solver.py; the solution check in
test_constraints.py.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
import torch

from core.config import PortfolioConfig
from core.errors import ShapeError, SolverError
from portfolio.constraints import check_solution
from portfolio.cvx import CvxpyBackend, solve_full_cov, solve_reference
from portfolio.layer import PortfolioLayer
from portfolio.torch_solver import QPSettings, solve_portfolio_qp

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # cvxpylayers' numpy-2 notice

CASES = {
    "long_only": dict(constraint="long_only"),
    "long_only_max_weight": dict(constraint="long_only", max_weight=0.15),
    "long_short": dict(constraint="long_short", leverage=1.5),
}


def random_problem(batch: int, n: int, k: int, seed: int, constraint: str = "long_only"):
    """Seeded inputs with a mix of free weights, bounds and no-trade kinks at the solution."""
    g = torch.Generator().manual_seed(seed)
    mu = 0.003 * torch.randn(batch, n, generator=g, dtype=torch.float64)
    factor = 0.05 / k**0.5 * torch.randn(batch, n, k, generator=g, dtype=torch.float64)
    diag = 1e-3 + 4e-3 * torch.rand(batch, n, generator=g, dtype=torch.float64)
    prev = torch.rand(batch, n, generator=g, dtype=torch.float64) - (0.3 if constraint == "long_short" else 0.0)
    return mu, factor, diag, prev / prev.sum(1, keepdim=True)


def nondegenerate_problem(batch: int, n: int, k: int, seed: int, constraint: str):
    """Interior solutions: no weight near 0, a bound or w_prev (checked by the tests using it)."""
    g = torch.Generator().manual_seed(seed)
    mu = 2e-4 * torch.randn(batch, n, generator=g, dtype=torch.float64)
    factor = 0.01 / k**0.5 * torch.randn(batch, n, k, generator=g, dtype=torch.float64)
    diag = 1e-3 + 4e-3 * torch.rand(batch, n, generator=g, dtype=torch.float64)
    prev = torch.full((batch, n), 0.0 if constraint == "long_short" else 0.2 / n, dtype=torch.float64)
    return mu, factor, diag, prev


def make_cfg(case: str, tc_rate: float, solver: str, **kw) -> PortfolioConfig:
    return PortfolioConfig(**CASES[case], risk_aversion=5.0, tc_rate=tc_rate, solver=solver, **kw)


def grads_of(layer, inputs, v):
    """Weights and d(sum v * w)/d(mu, cov_factor, cov_diag)."""
    leaves = [x.clone().requires_grad_(i < 3) for i, x in enumerate(inputs)]
    w = layer(*leaves)
    (w * v).sum().backward()
    return w.detach(), [x.grad for x in leaves[:3]]


def rel(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("solver", ["cvxpylayers", "torch"])
@pytest.mark.parametrize("tc_rate", [0.0, 0.0005])
@pytest.mark.parametrize("case", list(CASES))
def test_weights_match_direct_clarabel(case, tc_rate, solver):
    cfg = make_cfg(case, tc_rate, solver)
    inputs = random_problem(6, 15, 3, seed=11, constraint=cfg.constraint)
    w = PortfolioLayer(15, 3, cfg)(*inputs)
    ref = torch.from_numpy(solve_reference(*inputs, cfg))
    assert w.dtype == torch.float64 and w.shape == (6, 15)
    diff = float((w - ref).abs().max())
    assert diff <= 1e-5, f"{solver} {case} tc={tc_rate}: max |w - w_clarabel| = {diff:.2e}"
    # the problems exercise the constraints (otherwise the comparison proves little)
    if case == "long_only_max_weight":
        assert bool(((w - 0.15).abs() < 1e-6).any()), "no weight at max_weight"
    if case == "long_short":
        assert bool((w < -1e-3).any()), "no short position"


@pytest.mark.parametrize("method", ["Clarabel", "SCS"])
def test_other_cone_solvers_match_reference(method):
    cfg = make_cfg("long_short", 0.0005, "cvxpylayers", solve_method=method)
    inputs = random_problem(4, 12, 2, seed=5, constraint=cfg.constraint)
    w = PortfolioLayer(12, 2, cfg)(*inputs)
    # Clarabel inside cvxpylayers (cone form) is the least accurate: measured up to 1.5e-5.
    tol = 5e-5 if method == "Clarabel" else 1e-5
    assert float((w - torch.from_numpy(solve_reference(*inputs, cfg))).abs().max()) <= tol


@pytest.mark.parametrize("solver", ["cvxpylayers", "torch"])
@pytest.mark.parametrize("case", list(CASES))
def test_feasibility_invariants(case, solver):
    cfg = make_cfg(case, 0.0005, solver)
    inputs = random_problem(8, 20, 4, seed=3, constraint=cfg.constraint)
    w = PortfolioLayer(20, 4, cfg)(*inputs).detach()
    tol = 1e-9 if solver == "torch" else cfg.feasibility_tol
    assert float((w.sum(1) - 1).abs().max()) <= tol
    if cfg.constraint == "long_only":
        assert float(w.min()) >= -tol
        if cfg.max_weight is not None:
            assert float(w.max()) <= cfg.max_weight + tol
    else:
        assert float(w.abs().sum(1).max()) <= cfg.leverage + tol


@pytest.mark.parametrize("tc_rate", [0.0, 0.0005])
@pytest.mark.parametrize("constraint", ["long_only", "long_short"])
def test_torch_matches_cvxpylayers_on_nondegenerate_problems(constraint, tc_rate):
    base = PortfolioConfig(constraint=constraint, leverage=3.0, risk_aversion=5.0, tc_rate=tc_rate)
    n, k = 15, 3
    inputs = nondegenerate_problem(6, n, k, seed=0, constraint=constraint)
    v = torch.randn(6, n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    w_t, g_t = grads_of(PortfolioLayer(n, k, dataclasses.replace(base, solver="torch")), inputs, v)
    w_c, g_c = grads_of(PortfolioLayer(n, k, dataclasses.replace(base, solver="cvxpylayers")), inputs, v)
    margin = min(float(w_t.abs().min()), float((w_t - inputs[3]).abs().min()))
    assert margin > 1e-3, f"test problem is degenerate (margin {margin:.1e})"
    assert float((w_t - w_c).abs().max()) <= 1e-5
    # diffcp's derivative is only as good as its cone solve (lsqr on the cone program): measured
    # 1e-5..5e-5 relative without costs and 1.3e-4 with them (n = 15; 2.6e-4 at n = 30), while the
    # torch gradients match finite differences to ~1e-9 (test_portfolio_torch.py).
    tol = 1e-4 if tc_rate == 0 else 5e-4
    for name, a, b in zip(("mu", "cov_factor", "cov_diag"), g_c, g_t):
        assert rel(a, b) <= tol, f"d/d{name}: cvxpylayers vs torch relative difference {rel(a, b):.1e}"


@pytest.mark.parametrize("constraint", ["long_only", "long_short"])
def test_cvxpylayers_gradients_match_finite_differences(constraint):
    """Non-degenerate problems only: near a bound diffcp's gradients are off by up to ~20%."""
    cfg = PortfolioConfig(constraint=constraint, leverage=3.0, risk_aversion=5.0, tc_rate=0.0)
    n, k = 12, 2
    inputs = nondegenerate_problem(3, n, k, seed=4, constraint=constraint)
    v = torch.randn(3, n, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    _, grads = grads_of(PortfolioLayer(n, k, cfg), inputs, v)
    g = torch.Generator().manual_seed(9)
    direction = [torch.randn(x.shape, generator=g, dtype=torch.float64) * x.abs().mean() for x in inputs[:3]]
    eps = 1e-4  # reference solves are exact to ~1e-8; the problems are smooth at this scale

    def loss(sign):
        moved = [x + sign * eps * dx for x, dx in zip(inputs[:3], direction)] + [inputs[3]]
        return (torch.from_numpy(solve_reference(*moved, cfg)) * v).sum(1)

    fd = (loss(1) - loss(-1)) / (2 * eps)  # (B,)
    analytic = sum((gr * dx).flatten(1).sum(1) for gr, dx in zip(grads, direction))
    err = float((analytic - fd).abs().max() / fd.abs().max())
    assert err <= 1e-3, f"cvxpylayers directional derivative vs FD: {err:.1e} (measured ~1e-5)"


def test_infeasible_max_weight_is_refused_by_both_backends():
    for solver in ("cvxpylayers", "torch"):
        # max_weight * n < 1: the config validator refuses this, so build the config directly
        cfg = dataclasses.replace(PortfolioConfig(solver=solver), max_weight=0.05)
        inputs = random_problem(2, 10, 2, seed=0)
        with pytest.raises(SolverError, match="infeasible: max_weight = 0.05 with n_assets = 10"):
            PortfolioLayer(10, 2, cfg)(*inputs)


@pytest.mark.parametrize("method", ["ECOS", "Clarabel", "SCS"])
def test_cvxpylayers_infeasible_solve_is_detected(method):
    """Below the layer's a-priori check: the solver status (ECOS, SCS) or the solution check
    (Clarabel returns ~0 silently) must catch it."""
    cfg = dataclasses.replace(PortfolioConfig(solve_method=method), max_weight=0.05)
    inputs = random_problem(3, 10, 2, seed=0)
    with pytest.raises(SolverError, match="batch element 0"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            w = CvxpyBackend(10, 2, cfg)(*inputs)
        check_solution(w.detach(), inputs[3], cfg, backend=f"cvxpylayers/{method}")


def test_torch_infeasible_solve_is_detected_by_residuals():
    st = QPSettings(long_only=True, max_weight=0.05, leverage=1.0, risk_aversion=1.0, tc_rate=0.0005)
    inputs = random_problem(3, 10, 2, seed=0)
    with pytest.raises(SolverError, match="did not converge.*infeasible"):
        solve_portfolio_qp(*inputs, st, precheck=False)


@pytest.mark.parametrize("solver", ["cvxpylayers", "torch"])
def test_non_finite_input_names_the_batch_element(solver):
    mu, factor, diag, prev = random_problem(5, 10, 2, seed=1)
    mu[3, 4] = float("nan")
    layer = PortfolioLayer(10, 2, PortfolioConfig(solver=solver))
    with pytest.raises(SolverError, match="batch element 3 .*mu contains NaN"):
        layer(mu, factor, diag, prev)
    diag = diag.clone()
    diag[2, 0] = 0.0
    with pytest.raises(SolverError, match="batch element 2: cov_diag has a non-positive entry"):
        layer(random_problem(5, 10, 2, seed=1)[0], factor, diag, prev)


def test_shapes_are_checked():
    layer = PortfolioLayer(10, 2, PortfolioConfig(solver="torch"))
    mu, factor, diag, prev = random_problem(2, 10, 3, seed=0)
    with pytest.raises(ShapeError, match=r"cov_factor has shape \(2, 10, 3\), expected \(B, 10, 2\)"):
        layer(mu, factor, diag, prev)
    with pytest.raises(ShapeError, match="add a batch dim"):
        layer(mu[0], factor[0, :, :2], diag[0], prev[0])


@pytest.mark.parametrize("solver", ["cvxpylayers", "torch"])
def test_batch_of_one(solver):
    cfg = make_cfg("long_only_max_weight", 0.0005, solver)
    inputs = [x[:1] for x in random_problem(3, 12, 2, seed=7)]
    leaves = [x.clone().requires_grad_(i < 3) for i, x in enumerate(inputs)]
    w = PortfolioLayer(12, 2, cfg)(*leaves)
    w[0, :3].sum().backward()
    assert w.shape == (1, 12) and all(torch.isfinite(x.grad).all() for x in leaves[:3])
    assert float((w.detach() - torch.from_numpy(solve_reference(*inputs, cfg))).abs().max()) <= 1e-5


def test_float32_inputs_give_float64_weights():
    inputs = [x.float() for x in random_problem(2, 10, 2, seed=0)]
    w = PortfolioLayer(10, 2, PortfolioConfig(solver="torch"))(*inputs)
    assert w.dtype == torch.float64 and w.device == inputs[0].device


@pytest.mark.parametrize("case", ["long_only_max_weight", "long_short"])
def test_solve_full_cov_matches_the_factor_model(case):
    cfg = make_cfg(case, 0.0005, "torch")
    mu, factor, diag, prev = random_problem(3, 12, 2, seed=8, constraint=cfg.constraint)
    sigma = factor @ factor.transpose(1, 2) + torch.diag_embed(diag)  # (B, n, n)
    w = solve_full_cov(mu, sigma, prev, cfg)
    assert w.shape == (3, 12)
    assert np.abs(w - solve_reference(mu, factor, diag, prev, cfg)).max() <= 1e-6
    single = solve_full_cov(mu[0].numpy(), sigma[0].numpy(), None, dataclasses.replace(cfg, tc_rate=0.0))
    assert single.shape == (12,)


def test_solve_full_cov_minimum_variance_and_bad_covariances():
    cfg = PortfolioConfig(tc_rate=0.0)
    returns = np.random.default_rng(0).normal(0, 0.01, size=(8, 12))  # T < n: singular sample cov
    sigma = np.cov(returns, rowvar=False)
    w = solve_full_cov(np.zeros(12), sigma, None, cfg)
    assert abs(w.sum() - 1) < 1e-8 and w.min() > -1e-8
    assert w @ sigma @ w <= np.full(12, 1 / 12) @ sigma @ np.full(12, 1 / 12) + 1e-12
    with pytest.raises(SolverError, match="not positive semidefinite"):
        solve_full_cov(np.zeros(3), np.diag([1.0, 1.0, -1.0]), None, cfg)
    with pytest.raises(SolverError, match="not symmetric"):
        solve_full_cov(np.zeros(2), np.array([[1.0, 0.5], [0.0, 1.0]]), None, cfg)


@pytest.mark.parametrize("constraint", ["long_only", "long_short"])
def test_n104_both_backends(constraint):
    """The production size once: n = 104 factor portfolios, k = 8."""
    cfg = PortfolioConfig(constraint=constraint, max_weight=0.05 if constraint == "long_only" else None,
                          leverage=1.5, risk_aversion=5.0, tc_rate=0.0005)
    inputs = random_problem(3, 104, 8, seed=21, constraint=constraint)
    ref = torch.from_numpy(solve_reference(*inputs, cfg))
    for solver in ("cvxpylayers", "torch"):
        w = PortfolioLayer(104, 8, dataclasses.replace(cfg, solver=solver))(*inputs)
        assert float((w - ref).abs().max()) <= 1e-5, solver


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_torch_backend_runs_on_cuda():
    cfg = make_cfg("long_short", 0.0005, "torch")
    inputs = random_problem(16, 30, 4, seed=2, constraint=cfg.constraint)
    leaves = [x.cuda().requires_grad_(i < 3) for i, x in enumerate(inputs)]
    w = PortfolioLayer(30, 4, cfg)(*leaves)
    w.square().sum().backward()
    assert w.device.type == "cuda" and leaves[0].grad.device.type == "cuda"
    assert float((w.detach().cpu() - torch.from_numpy(solve_reference(*inputs, cfg))).abs().max()) <= 1e-5
