"""The torch backend of the portfolio layer: an exact, batched, differentiable QP solve.

Forward, all float64 torch on the inputs' device with no python loop over the batch:

1. semismooth Newton on the (k + 2)-dimensional dual (:mod:`portfolio.newton`) with an
   exact line search; it stops on a KKT certificate (~1e-12), typically in 3-7 steps;
2. elements it has not certified within its budget (tiny idiosyncratic variances make its dual
   ill-conditioned) go to a primal-dual interior point (:mod:`portfolio.ipm`) whose point
   is polished on its active set and certified by :mod:`portfolio.kkt`.

Either way the weights are the certified optimum, never an approximation or a substitute.

Backward: implicit differentiation of the KKT system restricted to the active set.  Every weight
is either *free* (strictly inside a linear piece of its cost, e.g. between 0 and max_weight and
away from w_prev) or *fixed* at a breakpoint a_i (0, max_weight, w_prev_i).  On that set the
optimum solves the equality-constrained QP::

    [P Q P + (I - P)   P E^T] [x]   [P (mu - c s - Q a)]      w = x + a,  P = diag(free)
    [E P               0    ] [y] = [e - E a          ]      E = [1; sign(w) if leverage binds]

with Q = 2 gamma Sigma.  With (xi, eta) the solution of the same (symmetric) system for the
right-hand side (P grad_w, 0)::

    dL/dmu = xi,   dL/dd = -2 gamma xi * w,   dL/dB = -2 gamma (xi (B^T w)^T + w (B^T xi)^T)
    dL/dw_prev_i = grad_w_i - (Q xi)_i - (E^T eta)_i   for weights held at w_prev_i (else 0)

Degenerate points (w_i == w_prev_i, a bound with a zero multiplier, a leverage row that binds
with a zero multiplier) are not differentiable; there the gradient is the one of the active set
the solver identified: such weights count as fixed (a one-sided derivative).
"""

from __future__ import annotations

import contextlib

import torch

from portfolio.constraints import check_feasible, held_by_bound
from portfolio.ipm import InteriorPoint
from portfolio.active_set import ActiveSet, solve_active_kkt
from portfolio.kkt import solve_exact
from portfolio.dual import Point
from portfolio.newton import DualNewton
from portfolio.problem import QPSettings, Scaled, check_conditioning, put, scale_problem, take

__all__ = ["QPSettings", "single_thread", "solve_portfolio_qp"]


@contextlib.contextmanager
def single_thread():
    """Run the enclosed torch CPU ops on one intra-op thread (restored afterwards).

    The solve is hundreds of small ops: a second OpenMP thread buys nothing there, and when
    another process holds a core the two threads stall each other at every parallel region
    (measured: a B = 128 solve took 240-560 ms instead of 15-25 ms).
    """
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def active_set(p: Scaled, st: QPSettings, pt: Point) -> ActiveSet:
    """The active set of a certified dual point; fixed weights snapped to their exact breakpoint
    (the nearest of 0 (bound or |w| kink), w_prev and max_weight; ties to the first)."""
    fixed, w = ~pt.free, pt.w
    value, dist = torch.zeros_like(w), w.abs()
    for cand in [p.w_prev] + ([st.max_weight] if st.long_only and st.max_weight is not None else []):
        gap = (w - cand).abs()
        nearer = gap < dist
        value, dist = torch.where(nearer, cand, value), torch.where(nearer, gap, dist)
    value = torch.where(fixed, value, 0.0)
    hard = held_by_bound(value, st.long_only, st.max_weight)
    at_prev = fixed & (value == p.w_prev) & ~hard & (st.tc_rate > 0)
    lev = pt.x[:, -1] > 0 if not st.long_only else torch.zeros_like(fixed[:, 0])  # nu > 0
    if not st.long_only:  # w = w_prev = 0: both kinks at 0; the steeper one holds the weight
        at_prev = at_prev & ((value != 0) | (p.c > pt.x[:, -1:]))
    sign = torch.where(fixed, torch.sign(value), torch.sign(w))
    return ActiveSet(pt.free, value, at_prev, torch.zeros_like(value), sign, lev)


def solve_exact_batch(mu, cov_factor, cov_diag, w_prev, st: QPSettings):
    """Certified weights (B, n) and their active set.

    Dual Newton for the elements whose idiosyncratic variances are not tiny next to their
    factor variances; the interior point for the others and for those Newton did not certify
    within its budget.
    """
    p = scale_problem(mu, cov_factor, cov_diag, w_prev, st)
    check_conditioning(p, mu, cov_factor, cov_diag, st)
    batch = mu.shape[0]
    newton = torch.full((batch,), st.newton_max_iter > 0, dtype=torch.bool, device=mu.device)
    if st.newton_max_iter > 0 and st.newton_min_ratio > 0:  # median idiosyncratic / factor variance
        med = torch.stack([p.d, p.fvar], 1).median(2).values  # (B, 2)
        newton = med[:, 0] >= st.newton_min_ratio * med[:, 1]
    n_newton = int(newton.sum())
    ok = torch.zeros_like(newton)
    w, A = torch.empty_like(p.mu), None
    if n_newton == batch:  # the usual case: no indexing
        pt, ok = DualNewton(p, st).solve()
        A = active_set(p, st, pt)
        w = torch.where(A.free, pt.w, A.value)  # fixed weights exactly at breakpoints
    elif n_newton:
        idx = newton.nonzero()[:, 0]
        sub = take(p, idx)
        pt, ok_sub = DualNewton(sub, st).solve()
        A_sub = active_set(sub, st, pt)
        w[idx] = torch.where(A_sub.free, pt.w, A_sub.value)
        ok[idx] = ok_sub
        A = _scatter_active(A_sub, idx, batch)
    if not bool(ok.all()):
        idx = (~ok).nonzero()[:, 0]
        ipm = InteriorPoint(take(p, idx), st, offset=idx)
        w_ipm, A_ipm = solve_exact(ipm, ipm.solve())
        w[idx] = w_ipm
        if A is None:
            A = _scatter_active(A_ipm, idx, batch)
        else:
            put(A, idx, A_ipm, slice(None))
    return w, A


def _scatter_active(A: ActiveSet, idx: torch.Tensor, batch: int) -> ActiveSet:
    """An active set for `batch` elements with A's rows at positions idx (others zero)."""
    def grow(x):
        out = x.new_zeros((batch,) + tuple(x.shape[1:]))
        out[idx] = x
        return out
    return ActiveSet(*(grow(getattr(A, f)) for f in ("free", "value", "at_prev", "slope", "sign", "lev")))


class _PortfolioQP(torch.autograd.Function):
    """w = argmin of the portfolio QP; exact gradients through the active-set KKT system."""

    @staticmethod
    def forward(ctx, mu, cov_factor, cov_diag, w_prev, st: QPSettings):
        with single_thread():
            w, A = solve_exact_batch(mu, cov_factor, cov_diag, w_prev, st)
        E, _ = A.rows(st.leverage, not st.long_only)  # (B, m, n)
        ctx.st = st
        ctx.save_for_backward(cov_factor, cov_diag, w, A.free, A.at_prev, E)
        return w

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_w):
        with single_thread():
            return _PortfolioQP._backward(ctx, grad_w)

    @staticmethod
    def _backward(ctx, grad_w):
        F, d, w, free, at_prev, E = ctx.saved_tensors
        two_gamma = 2.0 * ctx.st.risk_aversion
        # Q = 2 gamma (F F^T + diag d): solve with F, d and grad_w / (2 gamma), rescale eta
        xi, eta, _ = solve_active_kkt(F, d, free, E, grad_w / two_gamma, grad_w.new_zeros(E.shape[:2]))
        eta = eta * two_gamma
        Fw, Fxi = w.unsqueeze(1) @ F, xi.unsqueeze(1) @ F  # (B, 1, k)
        grad_F = (torch.stack([xi, w], 2) * -two_gamma) @ torch.cat([Fw, Fxi], 1)  # (B, n, k)
        grad_d = -two_gamma * xi * w
        q_xi = (d * xi).add_((Fxi @ F.transpose(1, 2)).squeeze(1)).mul_(two_gamma)  # Q xi
        rows = (eta.unsqueeze(1) @ E).squeeze(1)  # (B, n)
        grad_prev = torch.where(at_prev, grad_w - q_xi - rows, 0.0)
        return xi, grad_F, grad_d, grad_prev, None


def solve_portfolio_qp(mu, cov_factor, cov_diag, w_prev, st: QPSettings, precheck: bool = True) -> torch.Tensor:
    """Solve the batched portfolio QP exactly; differentiable w.r.t. all four tensor inputs.

    Parameters
    ----------
    mu : (B, n) float64        expected returns
    cov_factor : (B, n, k)     Sigma = cov_factor cov_factor^T + diag(cov_diag)
    cov_diag : (B, n) > 0
    w_prev : (B, n)            previous weights (transaction costs are charged on w - w_prev)
    st : QPSettings
    precheck : refuse infeasible constraint sets before solving (tests switch it off to check
        that the solver also detects them by its residuals).

    Returns
    -------
    (B, n) float64 weights, on mu's device.  Raises SolverError (naming the batch element) when
    the KKT certificate is not reached; never returns an unverified point.
    """
    if precheck:
        check_feasible(st.long_only, st.max_weight, st.leverage, mu.shape[1])
    return _PortfolioQP.apply(mu, cov_factor, cov_diag, w_prev, st)
