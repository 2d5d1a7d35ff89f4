"""The active set of a portfolio QP solution and the linear solve on it (forward polish and backward).

Every weight is either *free* (on a linear piece of its cost) or *fixed* at a breakpoint (a bound
0 / max_weight, the no-trade kink w_prev, the leverage kink 0).  On that set the optimum solves
the equality-constrained QP ("active KKT system")::

    [P Q P + (I - P)   P E^T] [x]   [P r]        w = x + a   (a = fixed values, 0 on free)
    [E P               0    ] [y] = [e - E a]    P = diag(free)

with Q = F F^T + diag(d) and E = [1; sign(w) if the leverage binds].  :func:`solve_active_kkt`
solves it by Woodbury on the free set; the polish (:mod:`portfolio.kkt`) and the implicit-KKT
backward (:mod:`portfolio.torch_solver`) both use it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from portfolio.problem import cholesky_checked

@dataclass
class ActiveSet:
    free: torch.Tensor  # (B, n) bool: on a linear piece of its cost
    value: torch.Tensor  # (B, n) fixed value (0 / max_weight / w_prev), 0 where free
    at_prev: torch.Tensor  # (B, n) bool: fixed at the no-trade kink w_prev
    slope: torch.Tensor  # (B, n) side of w_prev of a free weight, +-1 (0 without costs / fixed)
    sign: torch.Tensor  # (B, n) side of 0 of a free weight (long_short), sign(value) if fixed
    lev: torch.Tensor  # (B,) bool: the leverage row binds (long_short)

    def rows(self, leverage: float, long_short: bool):
        """Equality rows E (B, m, n) on w and their right-hand sides e (B, m) given the fixed values."""
        ones = torch.ones_like(self.value)
        E, e = [ones], [1.0 - self.value.sum(1)]
        if long_short:
            lev = self.lev.to(self.value.dtype)  # (B,)
            E.append(self.sign * lev.unsqueeze(1))
            e.append((leverage - (self.sign * self.value).sum(1)) * lev)
        return torch.stack(E, 1), torch.stack(e, 1)


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
    x : (B, n) zero on fixed assets, y : (B, m) multipliers (minimum norm if rows are redundant),
    null : (B, m, m) projector on the multipliers the free set leaves undetermined (0 if none).
    """
    Dinv = free.to(F.dtype) / d  # (B, n): the free block's diagonal, inverted; 0 on fixed assets
    DFT = F.transpose(1, 2) * Dinv.unsqueeze(1)  # (B, k, n)
    cap = torch.baddbmm(torch.eye(F.shape[2], dtype=F.dtype, device=F.device), DFT, F)  # I + F^T D^-1 F
    chol = cholesky_checked(cap, "the active-set KKT system's capacitance matrix I + F^T D^-1 F")
    DR = torch.cat([rhs_w.unsqueeze(1), E], 1) * Dinv.unsqueeze(1)  # (B, 1+m, n) right-hand sides as rows
    # Woodbury, one row per right-hand side: X = D^-1 R - (D^-1 F) cap^-1 F^T D^-1 R
    X = DR - torch.cholesky_solve((DR @ F).transpose(1, 2), chol).transpose(1, 2) @ DFT
    Xr, XE = X[:, :1], X[:, 1:]  # (B, 1, n), (B, m, n)
    # (B, m, m) PSD; singular when a row vanishes or two rows coincide on the free set
    inv, null = _psd_pinv(XE @ E.transpose(1, 2))
    y = inv @ (E @ Xr.transpose(1, 2) - rhs_e.unsqueeze(-1))  # (B, m, 1) minimum norm
    return (Xr - y.transpose(1, 2) @ XE).squeeze(1), y.squeeze(-1), null


def _psd_pinv(S):
    """Pseudo-inverse of the PSD (B, m, m) S and the projector on its null space (eigenvalues
    below 1e-12 of the largest count as 0); m = 1 in closed form."""
    if S.shape[-1] == 1:
        keep = S > 0
        return torch.where(keep, 1.0 / S, 0.0), (~keep).to(S.dtype)
    evals, evecs = torch.linalg.eigh(S)
    keep = evals > 1e-12 * evals.amax(-1, keepdim=True).clamp_min(1e-300)  # (B, m)
    inv = (evecs * torch.where(keep, 1.0 / evals, 0.0).unsqueeze(1)) @ evecs.transpose(1, 2)
    null = (evecs * (~keep).to(S.dtype).unsqueeze(1)) @ evecs.transpose(1, 2)  # (B, m, m)
    return inv, null


def q_times(F, d, v):
    """(F F^T + diag d) v for v (B, n)."""
    return d * v + (F @ (F.transpose(1, 2) @ v.unsqueeze(-1))).squeeze(-1)
