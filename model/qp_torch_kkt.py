"""Active-set polish, KKT certificate and the exact backward pass of the torch portfolio solver.

After the interior point (:mod:`model.qp_torch`) every asset is either *fixed* at a breakpoint of
its piecewise-linear cost (a bound 0 / max_weight, the no-trade kink w_prev, the leverage kink 0)
or *free* on a linear piece with a known slope.  On that active set the optimum solves the
equality-constrained QP ("active KKT system")::

    [P Q P + (I - P)   P E^T] [x]   [P r]        w = x + a   (a = fixed values, 0 on free)
    [E P               0    ] [y] = [e - E a]    P = diag(free)

with Q = F F^T + diag(d), r = mu - c * slope - Q a, E = [1; sign(w) if the leverage binds].
The polished w is exact to rounding; it is accepted only with a KKT certificate (primal
feasibility + every g_i = mu_i - (Q w)_i - lambda inside the subdifferential of asset i's cost).

The backward pass differentiates this system with the active set held fixed (implicit function
theorem).  At a degenerate point (w_i == w_prev_i, or a bound with a zero multiplier) the problem
is not differentiable; the gradient returned is the one of the active set the solver identified,
i.e. such coordinates are treated as fixed (a one-sided derivative).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from model.errors import SolverError
from model.qp_torch import InteriorPoint, IPMState, QPSettings, scale_problem

PRIMAL_TOL = 1e-9
"""Certificate: budget, bounds and leverage of the polished point (weights are O(1))."""
DUAL_TOL = 1e-6
"""Certificate: subgradient condition of the scaled problem (its data are O(1))."""
BREAK_TOL = 1e-12
"""A polished weight this close to a breakpoint counts as sitting on it."""


@dataclass
class ActiveSet:
    free: torch.Tensor  # (B, n) bool: on a linear piece of its cost
    value: torch.Tensor  # (B, n) fixed value (0 / max_weight / w_prev), 0 where free
    at_prev: torch.Tensor  # (B, n) bool: fixed at the no-trade kink w_prev
    slope: torch.Tensor  # (B, n) +-1 = side of w_prev of a free weight (0 without costs)
    E: torch.Tensor  # (B, m, n) equality rows on w: budget [, sign(w) if the leverage binds]
    e: torch.Tensor  # (B, m) their right-hand sides


def solve_active_kkt(F, d, free, E, rhs_w, rhs_e):
    """Solve the active KKT system with Woodbury on the free set.

    Parameters
    ----------
    F : (B, n, k), d : (B, n)   Q = F F^T + diag(d), d > 0.
    free : (B, n) bool          rows/columns of fixed assets are replaced by the identity.
    E : (B, m, n)               equality rows (zero rows allowed: their multiplier is 0).
    rhs_w : (B, n), rhs_e : (B, m)

    Returns
    -------
    x : (B, n) zero on fixed assets, y : (B, m) multipliers (minimum norm if rows are redundant).
    """
    fr = free.to(F.dtype)  # (B, n)
    Ff = F * fr.unsqueeze(-1)  # (B, n, k)
    Dinv = 1.0 / torch.where(free, d, torch.ones_like(d))  # (B, n)
    DF = Dinv.unsqueeze(-1) * Ff  # (B, n, k)
    cap = Ff.transpose(1, 2) @ DF  # (B, k, k)
    cap.diagonal(dim1=1, dim2=2).add_(1.0)
    chol = torch.linalg.cholesky(cap)
    Ef = E * fr.unsqueeze(1)  # (B, m, n)
    R = torch.cat([(rhs_w * fr).unsqueeze(-1), Ef.transpose(1, 2)], -1)  # (B, n, 1+m)
    DR = Dinv.unsqueeze(-1) * R
    X = DR - DF @ torch.cholesky_solve(Ff.transpose(1, 2) @ DR, chol)  # (B, n, 1+m)
    Xr, XE = X[..., :1], X[..., 1:]
    schur = Ef @ XE  # (B, m, m) PSD; singular when a row vanishes on the free set
    y = torch.linalg.pinv(schur, rtol=1e-12, hermitian=True) @ (Ef @ Xr - rhs_e.unsqueeze(-1))
    return (Xr - XE @ y).squeeze(-1), y.squeeze(-1)


def _q_times(F, d, v):
    """(F F^T + diag d) v for v (B, n)."""
    return d * v + (F @ (F.transpose(1, 2) @ v.unsqueeze(-1))).squeeze(-1)


def classify(ipm: InteriorPoint, S: IPMState) -> ActiveSet:
    """Active set of a converged interior point: a row is active where its multiplier > slack."""
    lay, st, wp = ipm.lay, ipm.st, ipm.p.w_prev
    act = S.z > S.s  # (B, n, J)
    fixed = torch.zeros_like(wp, dtype=torch.bool)
    value = torch.zeros_like(wp)
    if "lo" in lay.row:
        fixed = act[..., lay.row["lo"]]
    if "hi" in lay.row:
        hi = act[..., lay.row["hi"]] & ~fixed
        fixed, value = fixed | hi, torch.where(hi, torch.full_like(value, st.max_weight), value)
    if lay.ls:
        fixed = fixed | (act[..., lay.row["ls+"]] & act[..., lay.row["ls-"]])  # kink of |w| at 0
    at_prev = torch.zeros_like(fixed)
    slope = torch.zeros_like(value)
    if lay.tc:
        zp, zm = S.z[..., lay.row["tc+"]], S.z[..., lay.row["tc-"]]
        at_prev = act[..., lay.row["tc+"]] & act[..., lay.row["tc-"]] & ~fixed
        fixed, value = fixed | at_prev, torch.where(at_prev, wp, value)
        slope = torch.where(fixed, 0.0, torch.where(zp >= zm, 1.0, -1.0))
    ones = torch.ones_like(value)
    E, e = [ones], [ones[:, 0] - value.sum(1)]
    if lay.ls:
        lev = (S.zL > S.sL).to(value.dtype).unsqueeze(1)  # (B, 1) leverage binds
        zp, zm = S.z[..., lay.row["ls+"]], S.z[..., lay.row["ls-"]]
        sign = torch.where(fixed, torch.sign(value), torch.where(zp >= zm, 1.0, -1.0))  # (B, n)
        E.append(sign * lev)
        e.append((st.leverage - (sign * value).sum(1)) * lev[:, 0])
    return ActiveSet(~fixed, value, at_prev, slope, torch.stack(E, 1), torch.stack(e, 1))


def polish(ipm: InteriorPoint, A: ActiveSet) -> torch.Tensor:
    """Exact minimiser on the active set (B, n) (scaled problem; w does not depend on scale)."""
    p = ipm.p
    rhs = p.mu - p.c * A.slope - _q_times(p.F, p.d, A.value)  # (B, n)
    x, _ = solve_active_kkt(p.F, p.d, A.free, A.E, rhs, A.e)
    return x + A.value


def certify(ipm: InteriorPoint, S: IPMState, w: torch.Tensor):
    """KKT violation of a polished point: (primal (B,), dual (B,)) in weight / scaled units.

    Dual: g = mu - Q w - lambda must lie in [left, right] slope of asset i's cost at w_i
    (bounds give -inf / +inf, the kinks |w - w_prev| and nu |w| give both sides).
    lambda and nu come from the interior point (exact up to its tolerance).
    """
    p, st, lay = ipm.p, ipm.st, ipm.lay
    g = p.mu - _q_times(p.F, p.d, w) - S.y.unsqueeze(1)  # (B, n)
    left, right = torch.zeros_like(w), torch.zeros_like(w)
    if lay.tc:
        x = w - p.w_prev
        left = left + p.c * torch.where(x > BREAK_TOL, 1.0, -1.0)
        right = right + p.c * torch.where(x >= -BREAK_TOL, 1.0, -1.0)
    budget = (w.sum(1) - 1.0).abs()
    if lay.ls:
        nu = S.zL.unsqueeze(1)  # (B, 1)
        left = left + nu * torch.where(w > BREAK_TOL, 1.0, -1.0)
        right = right + nu * torch.where(w >= -BREAK_TOL, 1.0, -1.0)
        primal = torch.maximum(budget, (w.abs().sum(1) - st.leverage).clamp_min(0.0))
    else:
        left = torch.where(w <= BREAK_TOL, -torch.inf, left)
        primal = torch.maximum(budget, (-w).clamp_min(0.0).amax(1))
        if st.max_weight is not None:
            right = torch.where(w >= st.max_weight - BREAK_TOL, torch.inf, right)
            primal = torch.maximum(primal, (w - st.max_weight).clamp_min(0.0).amax(1))
    dual = torch.maximum(left - g, g - right).clamp_min(0.0).amax(1)
    return primal, dual
