"""The torch backend: exact gradients (vs float64 finite differences) and its failure modes.

Problems are built so that the solution has weights at 0, at max_weight, at the no-trade kink
w_prev (w_prev = the optimum of a nearby problem) and a binding leverage row: the gradient must
still match finite differences there, because the active set is stable under a 1e-8 nudge (1e-7 already moves one weight off its
kink in the long_short_tc case: the one-sided derivatives agree with ours up to 1e-8).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from model.errors import SolverError
from model.qp_torch import QPSettings, solve_portfolio_qp
from model.qp_torch_ipm import InteriorPoint, scale_problem
from model.qp_torch_kkt import classify, solve_exact

SETTINGS = {
    "long_only": QPSettings(long_only=True, max_weight=None, leverage=1.0, risk_aversion=2.0, tc_rate=0.0),
    "long_only_max_weight_tc": QPSettings(long_only=True, max_weight=0.2, leverage=1.0, risk_aversion=2.0, tc_rate=0.0005),
    "long_short": QPSettings(long_only=False, max_weight=None, leverage=1.3, risk_aversion=2.0, tc_rate=0.0),
    "long_short_tc": QPSettings(long_only=False, max_weight=None, leverage=1.3, risk_aversion=2.0, tc_rate=0.0005),
}


def binding_problem(st: QPSettings, batch=3, n=8, k=2, seed=0):
    """Inputs whose solution sits on bounds / kinks: w_prev is the optimum for a perturbed mu."""
    g = torch.Generator().manual_seed(seed)
    mu = 0.004 * torch.randn(batch, n, generator=g, dtype=torch.float64)
    factor = 0.05 / k**0.5 * torch.randn(batch, n, k, generator=g, dtype=torch.float64)
    diag = 1e-3 + 4e-3 * torch.rand(batch, n, generator=g, dtype=torch.float64)
    start = torch.full((batch, n), 1.0 / n, dtype=torch.float64)
    prev = solve_portfolio_qp(mu + 0.002 * torch.randn(batch, n, generator=g, dtype=torch.float64),
                              factor, diag, start, st)
    return mu, factor, diag, prev


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
        err = float((leaf.grad - num).abs().max() / num.abs().max().clamp_min(1e-12))
        assert err <= 1e-4, f"{name}: d/d{label} relative error {err:.1e} (measured ~1e-9)"


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


def test_many_near_degenerate_elements_are_solved_exactly():
    """A batch where w_prev is the previous optimum: most weights sit at kinks, some within
    1e-6 of them; the active-set polish must still settle on the exact optimum."""
    st = SETTINGS["long_short_tc"]
    g = torch.Generator().manual_seed(3)
    n, k, batch = 20, 3, 64
    mu = 0.004 * torch.randn(batch, n, generator=g, dtype=torch.float64)
    factor = 0.05 / k**0.5 * torch.randn(batch, n, k, generator=g, dtype=torch.float64)
    diag = 1e-3 + 4e-3 * torch.rand(batch, n, generator=g, dtype=torch.float64)
    prev = solve_portfolio_qp(mu, factor, diag, torch.full((batch, n), 1.0 / n, dtype=torch.float64), st)
    mu2 = mu + 1e-4 * torch.randn(batch, n, generator=g, dtype=torch.float64)
    w = solve_portfolio_qp(mu2, factor, diag, prev, st)
    p = scale_problem(mu2, factor, diag, prev, st)
    ipm = InteriorPoint(p, st)
    state = ipm.solve()
    A = classify(ipm, state)
    assert int((~A.free).sum()) > batch * n // 2, "test problem should be mostly at kinks"
    w_exact, _ = solve_exact(ipm, state)
    assert torch.equal(w, w_exact)
    from model.portfolio import solve_reference
    from model.config import PortfolioConfig

    cfg = PortfolioConfig(constraint="long_short", leverage=st.leverage, risk_aversion=st.risk_aversion,
                          tc_rate=st.tc_rate)
    assert float((w - torch.from_numpy(solve_reference(mu2, factor, diag, prev, cfg))).abs().max()) <= 1e-6


def test_iteration_cap_raises_instead_of_returning_a_rough_point():
    st = dataclasses.replace(SETTINGS["long_only_max_weight_tc"], max_iter=3)
    with pytest.raises(SolverError, match=r"batch element \d+ .*did not converge in 3 interior-point iterations"):
        solve_portfolio_qp(*binding_problem(SETTINGS["long_only"]), st)


def test_leverage_below_one_is_infeasible():
    st = dataclasses.replace(SETTINGS["long_short"], leverage=0.9)
    with pytest.raises(SolverError, match="leverage = 0.9 < 1"):
        solve_portfolio_qp(*binding_problem(SETTINGS["long_short"]), st)


@pytest.mark.parametrize("name", ["long_only_max_weight_tc", "long_short_tc"])
def test_active_set_steps_recover_from_a_wrong_guess(name, monkeypatch):
    """Corrupt the interior point's active set (free weights pinned to 0 / w_prev, pinned weights
    freed): the primal active-set steps must still reach the certified optimum."""
    import model.qp_torch_kkt as kkt

    st = SETTINGS[name]
    inputs = binding_problem(st, batch=8, n=10, seed=4)
    exact = solve_portfolio_qp(*inputs, st)
    true_classify = kkt.classify

    def wrong(ipm, state):
        A = true_classify(ipm, state)
        flip = torch.rand(A.free.shape, generator=torch.Generator().manual_seed(0)) < 0.3
        pin, release = flip & A.free, flip & ~A.free  # pin free weights, release pinned ones
        tc = st.tc_rate > 0
        pin_value = ipm.p.w_prev if tc else torch.zeros_like(A.value)
        A.value = torch.where(pin, pin_value, torch.where(release, 0.0, A.value))
        A.at_prev = (A.at_prev & ~release) | (pin & tc)
        A.free = (A.free & ~pin) | release
        A.slope = torch.where(release, 1.0, torch.where(pin, 0.0, A.slope)) * tc
        A.sign = torch.where(release, 1.0, torch.where(pin, torch.sign(A.value), A.sign))
        return A

    monkeypatch.setattr(kkt, "classify", wrong)
    w = solve_portfolio_qp(*inputs, st)
    assert float((w - exact).abs().max()) <= 1e-9
