"""The torch backend: exact gradients (vs float64 finite differences) and its failure modes.

Problems are built so that the solution has weights at 0, at max_weight, at the no-trade kink
w_prev (w_prev = the optimum of a nearby problem) and a binding leverage row: the gradient must
still match finite differences there, because the active set is stable under a 1e-8 nudge
(1e-7 already moved one weight off its kink in a long_short_tc case; the one-sided derivatives
agreed with ours up to 1e-8)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from core.errors import SolverError
from core.config import PortfolioConfig
from portfolio.cvx import solve_reference
from portfolio.torch_solver import QPSettings, solve_portfolio_qp
from portfolio.ipm import InteriorPoint
from portfolio.newton import DualNewton
from portfolio.problem import scale_problem

SETTINGS = {
    "long_only": QPSettings(long_only=True, max_weight=None, leverage=1.0, risk_aversion=2.0, tc_rate=0.0),
    "long_only_max_weight_tc": QPSettings(long_only=True, max_weight=0.2, leverage=1.0, risk_aversion=2.0,
                                          tc_rate=0.0005),
    "long_short": QPSettings(long_only=False, max_weight=None, leverage=1.3, risk_aversion=2.0, tc_rate=0.0),
    "long_short_tc": QPSettings(long_only=False, max_weight=None, leverage=1.3, risk_aversion=2.0, tc_rate=0.0005),
}


def binding_problem(st: QPSettings, batch=3, n=8, k=2, seed=0, lift=True):
    """Inputs whose solution sits on bounds / kinks: w_prev is the optimum for a perturbed mu."""
    g = torch.Generator().manual_seed(seed)
    mu = 0.004 * torch.randn(batch, n, generator=g, dtype=torch.float64)
    factor = 0.05 / k**0.5 * torch.randn(batch, n, k, generator=g, dtype=torch.float64)
    diag = 1e-3 + 4e-3 * torch.rand(batch, n, generator=g, dtype=torch.float64)
    start = torch.full((batch, n), 1.0 / n, dtype=torch.float64)
    # long_short: w_prev from a lower leverage.  At exactly the same leverage the weights held at
    # w_prev could alone decide the binding leverage row, a (structurally) degenerate point.
    prev_st = st if st.long_only else dataclasses.replace(st, leverage=st.leverage - 0.2)
    prev = solve_portfolio_qp(mu + 0.002 * torch.randn(batch, n, generator=g, dtype=torch.float64),
                              factor, diag, start, prev_st)
    # Lift w_prev off 0: where w_prev = 0 is also a bound or the |w| kink, the two kinks coincide
    # and the solution map has different one-sided derivatives (a degenerate point).
    lift = 0.002 * torch.rand(batch, n, generator=g, dtype=torch.float64) * (prev.abs() < 1e-12) * lift
    prev = prev + lift
    top = prev.argmax(1, keepdim=True)
    return mu, factor, diag, prev.scatter_add(1, top, -lift.sum(1, keepdim=True))  # sum stays 1


def active_counts(w, prev, st):
    at0 = int((w.abs() < 1e-12).sum())
    at_max = int(((w - st.max_weight).abs() < 1e-12).sum()) if st.max_weight else 0
    at_prev = int(((w - prev).abs() < 1e-12).sum()) if st.tc_rate > 0 else 0
    lev = int((w.abs().sum(1) > st.leverage - 1e-9).sum()) if not st.long_only else 0
    return at0, at_max, at_prev, lev


def finite_difference_grads(inputs, v, st, eps=1e-8):
    """Central differences of sum(v * w) w.r.t. every entry of every input.

    All perturbed problems go into one batch (the elements of a batch are independent).
    """
    batch = inputs[0].shape[0]
    sizes = [x[0].numel() for x in inputs]
    stacked = [x.repeat(2 * sum(sizes), *([1] * (x.dim() - 1))) for x in inputs]  # (2 * P * B, ...)
    row = 0
    for j, x in enumerate(inputs):
        for idx in range(sizes[j]):
            for sign in (1.0, -1.0):
                stacked[j].view(stacked[j].shape[0], -1)[row : row + batch, idx] += sign * eps
                row += batch
    w = solve_portfolio_qp(*stacked, st).view(-1, 2, batch, inputs[0].shape[1])  # (P, 2, B, n)
    losses = (w * v).sum(-1)  # (P, 2, B)
    diffs = ((losses[:, 0] - losses[:, 1]) / (2 * eps)).T  # (B, P)
    return [d.reshape(x.shape) for d, x in zip(diffs.split(sizes, dim=1), inputs)]


@pytest.mark.parametrize("name", list(SETTINGS))
def test_gradients_match_finite_differences_with_binding_constraints(name):
    st = SETTINGS[name]
    inputs = binding_problem(st)
    v = torch.randn(inputs[0].shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    leaves = [x.clone().requires_grad_() for x in inputs]
    w = solve_portfolio_qp(*leaves, st)
    (w * v).sum().backward()
    at0, at_max, at_prev, lev = active_counts(w.detach(), inputs[3], st)
    if st.long_only:
        assert at0 > 0, "no weight at 0"
    if st.max_weight:
        assert at_max > 0, "no weight at max_weight"
    if st.tc_rate > 0:
        assert at_prev > 0, "no weight at the no-trade kink"
    if not st.long_only:
        assert lev > 0, "leverage never binds"
    fd = finite_difference_grads(inputs, v, st)
    for label, leaf, num in zip(("mu", "cov_factor", "cov_diag", "w_prev"), leaves, fd):
        # (the floor: without costs d/dw_prev is exactly 0 and FD returns rounding noise ~1e-8)
        err = float((leaf.grad - num).abs().max() / num.abs().max().clamp_min(1e-2))
        assert err <= 1e-4, f"{name}: d/d{label} relative error {err:.1e} (measured ~1e-9)"


def test_w_prev_gradient_where_both_kinks_sit_at_zero():
    """long_short, w = w_prev = 0: the cost kink and the |w| kink coincide; the steeper one holds
    the weight.  Where both one-sided differences agree the gradient must match them."""
    st = SETTINGS["long_short_tc"]
    inputs = binding_problem(st, lift=False)
    v = torch.randn(inputs[0].shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    leaves = [x.clone().requires_grad_() for x in inputs]
    w = solve_portfolio_qp(*leaves, st)
    (w * v).sum().backward()
    checked = 0
    for b, i in ((w.detach().abs() < 1e-15) & (inputs[3].abs() < 1e-15)).nonzero().tolist():
        sides = []
        for sign in (1.0, -1.0):
            prev = inputs[3].clone()
            prev[b, i] += sign * 1e-8
            moved = solve_portfolio_qp(inputs[0], inputs[1], inputs[2], prev, st)
            sides.append(float(((moved - w.detach())[b] * v[b]).sum()) / (sign * 1e-8))
        if abs(sides[0] - sides[1]) < 1e-6:  # differentiable here
            assert float(leaves[3].grad[b, i]) == pytest.approx(sides[0], abs=1e-6)
            checked += 1
    assert checked > 0, "no weight with w = w_prev = 0 at a differentiable point"


def test_gradient_at_the_no_trade_kink_treats_the_weight_as_fixed():
    """Degenerate point w_i == w_prev_i: documented choice, dw_i/dmu = 0 and dw_i/dw_prev_i = 1."""
    st = SETTINGS["long_only_max_weight_tc"]
    mu, factor, diag, prev = binding_problem(st, batch=4, n=8)
    leaves = [x.clone().requires_grad_() for x in (mu, factor, diag, prev)]
    w = solve_portfolio_qp(*leaves, st)
    held = ((w.detach() - prev).abs() < 1e-12) & (w.detach() > 1e-12) & (w.detach() < st.max_weight - 1e-12)
    b, i = held.nonzero()[0].tolist()
    w[b, i].backward()
    assert float(leaves[0].grad.abs().max()) == 0.0
    assert float(leaves[3].grad[b, i]) == pytest.approx(1.0, abs=1e-12)


def reference_cfg(st: QPSettings) -> PortfolioConfig:
    return PortfolioConfig(constraint="long_only" if st.long_only else "long_short", max_weight=st.max_weight,
                           leverage=st.leverage, risk_aversion=st.risk_aversion, tc_rate=st.tc_rate)


@pytest.mark.parametrize("name", ["long_only_max_weight_tc", "long_short_tc"])
def test_many_near_degenerate_elements_are_solved_exactly(name):
    """w_prev = the previous optimum and a small change in mu: most weights sit at their no-trade
    kink, many within ~1e-6 of leaving it; the Newton solve must land on the exact optimum."""
    st = SETTINGS[name]
    g = torch.Generator().manual_seed(3)
    n, k, batch = 20, 3, 48
    mu = 0.004 * torch.randn(batch, n, generator=g, dtype=torch.float64)
    factor = 0.05 / k**0.5 * torch.randn(batch, n, k, generator=g, dtype=torch.float64)
    diag = 1e-3 + 4e-3 * torch.rand(batch, n, generator=g, dtype=torch.float64)
    prev = solve_portfolio_qp(mu, factor, diag, torch.full((batch, n), 1.0 / n, dtype=torch.float64), st)
    mu2 = mu + 1e-4 * torch.randn(batch, n, generator=g, dtype=torch.float64)
    w = solve_portfolio_qp(mu2, factor, diag, prev, st)
    assert int(((w - prev).abs() < 1e-12).sum()) > batch * n // 2, "test problem should be mostly at kinks"
    ref = torch.from_numpy(solve_reference(mu2, factor, diag, prev, reference_cfg(st)))
    assert float((w - ref).abs().max()) <= 1e-6


def test_no_trade_solution_where_every_weight_is_fixed():
    """A cost so high that w = w_prev for every asset: the Newton matrix loses its budget
    curvature (g is piecewise linear there); the ridge must still reach the certificate, and
    the gradient is 0 for mu and the identity for w_prev."""
    st = dataclasses.replace(SETTINGS["long_only_max_weight_tc"], tc_rate=0.05)
    mu, factor, diag, _ = binding_problem(SETTINGS["long_only"], batch=4, n=8)
    prev = torch.full((4, 8), 1.0 / 8, dtype=torch.float64)
    leaves = [x.clone().requires_grad_() for x in (mu, factor, diag, prev)]
    w = solve_portfolio_qp(*leaves, st)
    assert torch.equal(w.detach(), prev)
    w[:, 0].sum().backward()
    assert float(leaves[0].grad.abs().max()) == 0.0
    assert torch.allclose(leaves[3].grad[:, 0], torch.ones(4, dtype=torch.float64))


def test_iteration_cap_raises_instead_of_returning_a_rough_point():
    st = dataclasses.replace(SETTINGS["long_only_max_weight_tc"], newton_max_iter=0, max_iter=3)
    with pytest.raises(SolverError, match=r"batch element \d+ .*did not converge in 3 interior-point iterations"):
        solve_portfolio_qp(*binding_problem(SETTINGS["long_only"]), st)


def test_leverage_below_one_is_infeasible():
    st = dataclasses.replace(SETTINGS["long_short"], leverage=0.9)
    with pytest.raises(SolverError, match="leverage = 0.9 < 1"):
        solve_portfolio_qp(*binding_problem(SETTINGS["long_short"]), st)


def test_newton_iterations_and_certificate():
    """The dual Newton stage stops on the KKT certificate (dual gradient <= tol) in a few steps."""
    st = SETTINGS["long_short_tc"]
    p = scale_problem(*binding_problem(st, batch=16, n=30, k=4, seed=6), st)
    solver = DualNewton(p, st)
    point, certified = solver.solve()
    assert bool(certified.all())
    assert float(solver.residual(point).max()) <= st.newton_tol
    fewer = dataclasses.replace(st, newton_max_iter=3)
    _, certified = DualNewton(p, fewer).solve()
    assert not bool(certified.all()), "3 Newton steps should not certify every element here"


@pytest.mark.parametrize("name", list(SETTINGS))
def test_interior_point_stage_agrees_with_the_newton_stage(name):
    """newton_max_iter = 0 sends every element through the interior point + active-set polish."""
    st = SETTINGS[name]
    inputs = binding_problem(st, batch=6, n=12, k=3, seed=2)
    v = torch.randn(inputs[0].shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    results = []
    for settings in (st, dataclasses.replace(st, newton_max_iter=0)):
        leaves = [x.clone().requires_grad_() for x in inputs]
        w = solve_portfolio_qp(*leaves, settings)
        (w * v).sum().backward()
        results.append([w.detach()] + [x.grad for x in leaves])
    for a, b in zip(*results):
        assert float((a - b).abs().max()) <= 1e-9 * max(1.0, float(b.abs().max()))


def count_interior_point_elements(monkeypatch) -> list:
    """The batch sizes InteriorPoint.solve is called with from now on (it still runs)."""
    solved = []
    ipm_solve = InteriorPoint.solve

    def spy(self):
        solved.append(self.p.mu.shape[0])
        return ipm_solve(self)

    monkeypatch.setattr(InteriorPoint, "solve", spy)
    return solved


@pytest.mark.parametrize("name", ["long_only_max_weight_tc", "long_short_tc"])
def test_tiny_idiosyncratic_variance_through_the_interior_point(name, monkeypatch):
    """d 1000x below the factor variances, routed straight to the interior point
    (newton_min_ratio): the answer is still the exact optimum."""
    st = dataclasses.replace(SETTINGS[name], newton_min_ratio=0.01)
    mu, factor, diag, prev = binding_problem(st, batch=32, n=40, k=4, seed=8)
    diag = diag * 1e-3
    solved = count_interior_point_elements(monkeypatch)
    w = solve_portfolio_qp(mu, factor, diag, prev, st)
    assert sum(solved) == 32, "the test should exercise the interior-point stage for every element"
    ref = torch.from_numpy(solve_reference(mu, factor, diag, prev, reference_cfg(st)))
    assert float((w - ref).abs().max()) <= 1e-6


@pytest.mark.parametrize("name", ["long_only_max_weight_tc", "long_short_tc"])
def test_small_idiosyncratic_variance_goes_to_the_newton_stage_first(name, monkeypatch):
    """d ~100x below the factor variances (the benchmark's hard regime) goes to the dual
    Newton stage first, which certifies the optimum for all (long_only) or most (long_short: 27
    of 32 here) elements with its exact line search; the interior point takes the rest."""
    st = SETTINGS[name]
    mu, factor, diag, prev = binding_problem(st, batch=32, n=40, k=4, seed=8)
    diag = diag * 1e-2
    solved = count_interior_point_elements(monkeypatch)
    w = solve_portfolio_qp(mu, factor, diag, prev, st)
    assert sum(solved) <= (0 if st.long_only else 8), f"interior point took {sum(solved)} of 32 elements"
    ref = torch.from_numpy(solve_reference(mu, factor, diag, prev, reference_cfg(st)))
    assert float((w - ref).abs().max()) <= 1e-6


def near_long_only_problem():
    """leverage 1.001 with costs: the free weights of the optimum all have one sign, so the
    budget and leverage rows coincide on the free set (found by a stress run; element 28)."""
    g = torch.Generator().manual_seed(1)
    batch, n, k = 64, 104, 8
    mu = 0.0003 * torch.randn(batch, n, generator=g, dtype=torch.float64)
    factor = 0.05 / k**0.5 * torch.randn(batch, n, k, generator=g, dtype=torch.float64)
    diag = 1e-3 + 4e-3 * torch.rand(batch, n, generator=g, dtype=torch.float64)
    prev = torch.rand(batch, n, generator=g, dtype=torch.float64) - 0.3
    prev = prev / prev.sum(1, keepdim=True)
    st = QPSettings(long_only=False, max_weight=None, leverage=1.001, risk_aversion=1.0, tc_rate=0.0005)
    return [x[28:29] for x in (mu, factor, diag, prev)], st


def test_one_signed_free_set_is_solved_exactly():
    """Newton's budget and leverage columns coincide there (a ridge keeps the step bounded)."""
    inputs, st = near_long_only_problem()
    w = solve_portfolio_qp(*inputs, st)
    ref = torch.from_numpy(solve_reference(*inputs, reference_cfg(st)))
    assert float((w - ref).abs().max()) <= 1e-6
    assert float(w.abs().sum()) <= st.leverage + 1e-12


def test_polish_refuses_a_face_that_leaves_the_leverage_unmet():
    """Through the interior point, the active-set polish lands on a face whose budget and
    leverage rows coincide on the free set; its minimiser met the budget but not the leverage
    (by 1e-5) and used to be returned.  Refusing is right, and it must be for that cause: the
    active set does not settle, with the leverage (primal) violation of that face named."""
    inputs, st = near_long_only_problem()
    pattern = (r"batch element 0 \(of 1\): the active set did not settle in \d+ steps after the interior"
               r" point \(KKT violation: primal \d\.\de-0[5-6], dual")
    with pytest.raises(SolverError, match=pattern):
        solve_portfolio_qp(*inputs, dataclasses.replace(st, newton_max_iter=0))
