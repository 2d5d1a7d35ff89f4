"""The torch backend of the portfolio layer: an exact, batched, differentiable QP solve.

Forward: interior point (:mod:`model.qp_torch_ipm`), then an active-set polish with a KKT
certificate (:mod:`model.qp_torch_kkt`); everything is float64 torch on the inputs' device, with
no python loop over the batch and no host copy of the data.

Backward: implicit differentiation of the KKT system restricted to the certified active set
(free weights + budget [+ leverage] rows).  With xi, eta the solution of that (symmetric) system
for the right-hand side (grad_w on the free set, 0)::

    dL/dmu = xi,   dL/dd = -2 gamma xi * w,   dL/dF = -2 gamma (xi (F^T w)^T + w (F^T xi)^T)
    dL/dw_prev_i = grad_w_i - (Q xi)_i - (E^T eta)_i   for weights held at w_prev_i (else 0)

Weights at a bound or at the no-trade kink w_prev are treated as fixed: at such (degenerate)
points the problem is not differentiable and this is the derivative of the identified active set.
"""

from __future__ import annotations

import math

import torch

from model.errors import SolverError
from model.qp_torch_ipm import InteriorPoint, QPSettings, scale_problem
from model.qp_torch_kkt import solve_active_kkt, solve_exact

__all__ = ["QPSettings", "check_feasible", "solve_portfolio_qp"]


def check_feasible(st: QPSettings, n_assets: int) -> None:
    """Refuse constraint sets that no weights satisfy (before any solve)."""
    if st.long_only and st.max_weight is not None and st.max_weight * n_assets < 1.0 - 1e-12:
        raise SolverError(
            f"portfolio problem is infeasible: max_weight = {st.max_weight} with n_assets = {n_assets}"
            f" allows at most max_weight * n_assets = {st.max_weight * n_assets:.6g} < 1 in total, but the"
            f" weights must sum to 1. Set portfolio.max_weight >= {1.0 / n_assets:.6g} (or null)."
        )
    if not st.long_only and st.leverage < 1.0:
        raise SolverError(
            f"portfolio problem is infeasible: leverage = {st.leverage} < 1, but sum |w| >= |sum w| = 1."
            " Set portfolio.leverage >= 1."
        )


class _PortfolioQP(torch.autograd.Function):
    """w = argmin of the portfolio QP; exact gradients through the active-set KKT system."""

    @staticmethod
    def forward(ctx, mu, cov_factor, cov_diag, w_prev, st: QPSettings):
        p = scale_problem(mu, cov_factor, cov_diag, w_prev, st)
        ipm = InteriorPoint(p, st)
        state = ipm.solve()
        w, A = solve_exact(ipm, state)  # (B, n), certified active set
        E, _ = A.rows(st.leverage, not st.long_only)  # (B, m, n)
        ctx.st = st
        ctx.save_for_backward(cov_factor, cov_diag, w, A.free, A.at_prev, E)
        return w

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_w):
        F, d, w, free, at_prev, E = ctx.saved_tensors
        two_gamma = 2.0 * ctx.st.risk_aversion
        Fq, dq = F * math.sqrt(two_gamma), d * two_gamma  # Q = Fq Fq^T + diag(dq) = 2 gamma Sigma
        zeros = grad_w.new_zeros(E.shape[:2])
        xi, eta, _ = solve_active_kkt(Fq, dq, free, E, grad_w, zeros)  # (B, n), (B, m)
        Fw = (F.transpose(1, 2) @ w.unsqueeze(-1)).transpose(1, 2)  # (B, 1, k)
        Fxi = (F.transpose(1, 2) @ xi.unsqueeze(-1)).transpose(1, 2)  # (B, 1, k)
        grad_F = -two_gamma * (xi.unsqueeze(-1) * Fw + w.unsqueeze(-1) * Fxi)  # (B, n, k)
        grad_d = -two_gamma * xi * w
        q_xi = dq * xi + (Fq @ (Fq.transpose(1, 2) @ xi.unsqueeze(-1))).squeeze(-1)
        grad_prev = torch.where(at_prev, grad_w - q_xi - (E.transpose(1, 2) @ eta.unsqueeze(-1)).squeeze(-1), 0.0)
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
        that the interior point also detects them by its residuals).

    Returns
    -------
    (B, n) float64 weights, on mu's device.  Raises SolverError (naming the batch element) on
    non-convergence or an uncertifiable result; never returns an unverified point.
    """
    if precheck:
        check_feasible(st, mu.shape[1])
    return _PortfolioQP.apply(mu, cov_factor, cov_diag, w_prev, st)

