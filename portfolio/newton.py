"""Exact batched solve of the portfolio QP: semismooth Newton on its small smooth dual.

Per batch element, after dividing the objective by its largest coefficient (:func:`scale_problem`)::

    minimise   0.5 ||F^T w||^2 + 0.5 sum d_i w_i^2 - mu^T w + sum_i phi_i(w_i)   s.t.  1^T w = 1
    phi_i(w)   = c |w - w_prev_i| + [0 <= w <= max_weight]                 (long_only)
               = c |w - w_prev_i| + nu |w|  with nu >= 0 for sum |w| <= L  (long_short)

Because d > 0 the weights separate once v = F^T w is dualised: with multipliers eta (k,) for
F^T w = v, lambda for the budget and nu for the leverage, every w_i is a closed-form prox of
t_i = mu_i - F_i . eta - lambda (a soft threshold at w_prev_i and 0, clipped to the bounds), and
the dual function

    g(eta, lambda, nu) = -0.5 ||eta||^2 - lambda - nu L + sum_i min_w [0.5 d_i w^2 - t_i w + phi_i(w)]

is concave, C^1 and piecewise quadratic in k + 1 (+1) variables, with gradient
(F^T w - eta, 1^T w - 1, sum |w| - L).  Newton on it (Hessian I + Z^T diag(free / d) Z with
Z = [F, 1, sign w]) identifies the pieces and then lands on the optimum exactly: at a zero
gradient w is the exact primal optimum (each w_i is an exact prox), so the stopping test is the
KKT certificate.  Globalisation: the full step is kept when it passes Armijo and does not go far
past the maximum on its ray; otherwise the step goes to that maximum exactly (:meth:`DualNewton.ray_max`:
along a ray g is piecewise quadratic, each asset changes piece at known points, which are
sorted and summed).  The start is eta = F^T w_prev with the budget multiplier exact (long_only)
or two cheap Newton steps on the budget and leverage multipliers (long_short).  No python loop
over the batch; certified elements leave the batch; the solve is overhead bound on the CPU
(hundreds of small ops), so the code favours few ops and the (B, 1, k) @ (B, k, n) product
layout.

This is the fast stage of the torch backend (3-7 steps at n = 104 when the idiosyncratic
variances d are not small next to the factor variances, ~12 when they are 1% of them).  With
d -> 0 the dual's curvature 1/d grows, its pieces get dense and Newton crawls; such elements
(median d below ``newton_min_ratio`` of the median factor variance, still far from the
certificate at ``newton_checkpoint``, or not certified after ``newton_max_iter`` steps) are
solved by the interior point (:mod:`portfolio.ipm`) instead, which does not mind.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

CURVATURE = 0.5
"""The full Newton step is kept when phi'(1) >= -CURVATURE phi'(0) (and Armijo holds)."""
BEYOND = 1e150
"""Stands for the crossings that never come in the exact line search (finite: 0 * BEYOND = 0)."""
COMPACT_MIN = 16
"""Batches smaller than this are not compacted when elements finish (the indexing costs more)."""
COMPACT_FRACTION = 0.5
"""Finished elements leave the batch once at most this fraction of it is still running."""


@dataclass(frozen=True)
class QPSettings:
    """Static problem data of the torch backend (from :class:`core.config.PortfolioConfig`)."""

    long_only: bool
    max_weight: Optional[float]
    """Upper bound per weight (long_only only); None = no upper bound."""
    leverage: float
    """Gross leverage limit sum |w| <= leverage (long_short only)."""
    risk_aversion: float
    tc_rate: float
    newton_tol: float = 1e-11
    """Dual Newton stop: the dual gradient (= the primal KKT residual: F^T w - eta, budget,
    leverage) of the scaled problem; weights are O(1)."""
    newton_max_iter: int = 60
    """Dual Newton budget; elements not certified by then go to the interior point.  Certified
    elements leave the batch, so a few slow ones cost little next to an interior-point solve."""
    newton_checkpoint: int = 30
    """After this many Newton steps, elements whose residual is still above newton_on_track go
    to the interior point at once (Newton would crawl)."""
    newton_on_track: float = 1e-1
    newton_min_ratio: float = 0.0
    """Elements whose median idiosyncratic variance is below this fraction of the median factor
    variance go straight to the interior point.  0: every element tries Newton first (measured
    at n = 104 down to d ~ 1e-4 of the factor variance: Newton, then the interior point for the
    elements it leaves, was faster than the interior point alone, and certified some that the
    interior point's active-set polish could not settle)."""
    tol: float = 1e-9
    """Interior-point stop: primal and dual residuals of the scaled problem."""
    gap_tol: float = 1e-10
    """Interior-point stop: mean complementarity; small enough to tell active rows apart."""
    max_iter: int = 60
    """Interior-point cap; reaching it raises SolverError (never returns an unconverged point)."""

    @classmethod
    def from_config(cls, cfg) -> "QPSettings":
        """Build from a PortfolioConfig (max_weight only applies to long_only).

        long_short with leverage 1 is long_only in disguise (sum |w| <= 1 = sum w forces w >= 0)
        and is solved as such: as a leverage row it has no strictly feasible point, which the
        interior point needs.
        """
        long_only = cfg.constraint == "long_only" or abs(float(cfg.leverage) - 1.0) <= 1e-12
        return cls(
            long_only=long_only,
            max_weight=cfg.max_weight if cfg.constraint == "long_only" else None,
            leverage=float(cfg.leverage),
            risk_aversion=float(cfg.risk_aversion),
            tc_rate=float(cfg.tc_rate),
        )


@dataclass
class Scaled:
    """The problem divided by a per-element scale so that tolerances mean the same everywhere."""

    mu: torch.Tensor  # (B, n)
    F: torch.Tensor  # (B, n, k)   sqrt(2 gamma / scale) * cov_factor
    d: torch.Tensor  # (B, n)      2 gamma * cov_diag / scale
    c: torch.Tensor  # (B, 1)      tc_rate / scale
    w_prev: torch.Tensor  # (B, n)
    scale: torch.Tensor  # (B, 1)
    fvar: torch.Tensor  # (B, n)   |F_i|^2, the factor variance of each asset (scaled like d)


def scale_problem(mu, cov_factor, cov_diag, w_prev, st: QPSettings) -> Scaled:
    """Divide the objective by its largest coefficient (the minimiser does not change)."""
    two_gamma = 2.0 * st.risk_aversion
    fvar = cov_factor.square() @ cov_factor.new_ones(cov_factor.shape[2])  # (B, n) |B_i|^2
    var = two_gamma * (cov_diag + fvar)  # (B, n) diag of 2 gamma Sigma
    scale = torch.maximum(mu.abs().amax(1), var.amax(1)).clamp_min(st.tc_rate)  # (B,)
    scale = scale.clamp_min(1e-300).unsqueeze(1)  # (B, 1)
    factor = two_gamma / scale
    return Scaled(
        mu=mu / scale,
        F=cov_factor * factor.sqrt().unsqueeze(2),
        d=factor * cov_diag,
        c=st.tc_rate / scale,
        w_prev=w_prev,
        scale=scale,
        fvar=factor * fvar,
    )


@dataclass
class Point:
    """A dual point x = (eta, lambda[, nu]) (B, k+m) and what it implies."""

    x: torch.Tensor  # (B, k+m)
    t: torch.Tensor  # (B, n)   mu - F eta - lambda
    w: torch.Tensor  # (B, n)   the primal minimiser of the Lagrangian
    free: torch.Tensor  # (B, n) bool: w_i strictly inside a linear piece of phi_i
    g: torch.Tensor  # (B,)     dual objective
    grad: torch.Tensor  # (B, k+m) gradient of the dual function


def argsort_rows(x: torch.Tensor) -> torch.Tensor:
    """torch.argsort(x, dim=1); on the CPU through numpy (3-5x faster for rows of a few hundred)."""
    if x.device.type == "cpu":
        return torch.from_numpy(np.argsort(x.detach().numpy(), axis=1))
    return torch.argsort(x, dim=1)


_SHARED = ("mu", "c", "w_prev", "FT", "Z", "invd")
"""Tables of DualNewton.tab that are (views of) other fields, indexed once in subset."""


class DualNewton:
    """One batched solve (the scaled problem p under settings st)."""

    def __init__(self, p: Scaled, st: QPSettings):
        self.p, self.st = p, st
        self.k = k = p.F.shape[2]
        self.m = 1 if st.long_only else 2  # budget [, leverage]
        self.tc = st.tc_rate > 0
        self.hi = st.max_weight if st.max_weight is not None else float("inf")
        self.invd = 1.0 / p.d
        # Z = [F, 1 (, sign w)]: w^T Z = (F^T w, 1^T w, ...), the Newton matrix Z^T diag(a) Z
        self.Z = torch.cat([p.F, torch.ones_like(p.F[..., : self.m])], -1)  # (B, n, k+m)
        self.ZT = self.Z.transpose(1, 2).contiguous()  # (B, k+m, n)
        self.ridge = torch.cat([torch.ones(k), torch.full((self.m,), 1e-14)]).to(p.mu).diag()
        # what evaluate needs, per element (products as (B, 1, k) @ (B, k, n): the fast layout)
        self.tab = dict(mu=p.mu, FT=self.ZT[:, :k], Z=self.Z, half_d=0.5 * p.d, invd=self.invd, c=p.c,
                        w_prev=p.w_prev)
        prev = p.w_prev if self.tc else torch.zeros_like(p.mu)
        if st.long_only:
            self.tab.update(dprev=p.d * prev)  # the kink w_prev in t
        else:  # the kinks a <= b
            self.tab.update(lo=prev.clamp_max(0.0), up=prev.clamp_min(0.0), sprev=torch.sign(prev))
        self.base, self.coef, turn = self._breakpoints()
        self.turn_d = turn.unsqueeze(-1) * self.invd.unsqueeze(1)  # (B, E, n)

    def subset(self, idx: torch.Tensor) -> "DualNewton":
        """The same solver for the batch elements idx (its tables indexed, not rebuilt)."""
        new = copy.copy(self)
        new.p = take(self.p, idx)
        new.Z, new.ZT, new.invd = self.Z[idx], self.ZT[idx], self.invd[idx]
        new.base, new.turn_d = self.base[idx], self.turn_d[idx]
        new.coef = self.coef[idx] if self.coef is not None else None
        new.tab = {name: value[idx] for name, value in self.tab.items() if name not in _SHARED}
        new.tab.update(mu=new.p.mu, c=new.p.c, w_prev=new.p.w_prev, FT=new.ZT[:, : self.k], Z=new.Z, invd=new.invd)
        return new

    def rows(self, idx: torch.Tensor) -> dict:
        """evaluate's tables for the batch elements idx."""
        return {name: value[idx] for name, value in self.tab.items()}

    # ------------------------------------------------------------------ the separable part
    def prox(self, t: torch.Tensor, nu: Optional[torch.Tensor], tab: dict):
        """w_i = argmin 0.5 d_i w^2 - t_i w + phi_i(w) and whether it is on a linear piece."""
        if self.st.long_only:
            if self.tc:
                r = t - tab["dprev"]
                excess = (r.abs() - tab["c"]).clamp_min_(0.0)  # soft threshold around the kink w_prev
                u = (torch.sign(r) * excess).mul_(tab["invd"]).add_(tab["w_prev"])
                free = excess > 0
            else:
                u, free = t * tab["invd"], torch.ones_like(t, dtype=torch.bool)
            w = u.clamp(0.0, self.hi)
            return w, free & (w == u)  # (u exactly at a bound counts as fixed either way)
        # long_short: kinks at a = min(0, w_prev) and b = max(0, w_prev); outer slopes -+(c + nu),
        # middle slope m.  w = min(uL, a) + clamp(uM, a, b) + max(uR, b) - a - b (arithmetic only).
        a, b, invd = tab["lo"], tab["up"], tab["invd"]
        outer = tab["c"] + nu if self.tc else nu  # (B, 1)
        mid = tab["sprev"] * (nu - tab["c"]) if self.tc else torch.zeros_like(t)  # (B, n) slope between the kinks
        w = torch.minimum((t + outer).mul_(invd), a) + torch.maximum(torch.minimum((t - mid).mul_(invd), b), a)
        w = w.add_(torch.maximum((t - outer).mul_(invd), b)).sub_(a).sub_(b)
        # (on a flat stretch w is exactly a or b: one of them is 0, so the sum above is exact)
        return w, (w != a) & (w != b)

    def _breakpoints(self):
        """Where each w_i(t_i) changes piece: t = base + nu * coef (B, E, n), in increasing order.

        w_i(t) is continuous, nondecreasing and piecewise linear in t: flat (w at a breakpoint p
        of phi_i) for t in [d p + s_left, d p + s_right], slope 1/d on a linear piece of slope s
        (w = (t - s) / d).  turn (E,) is +1 at the left end of a flat stretch (linear piece on
        the left), -1 at its right end.  coef is the rate at which the slope of the adjacent
        linear piece moves with nu (long_short: +-1 on the outer pieces, sign(w_prev) between
        the kinks; None for long_only).
        """
        p, d = self.p, self.p.d
        c = p.c.expand_as(d) if self.tc else torch.zeros_like(d)
        if self.st.long_only:  # flat at 0, [w_prev clamped to the bounds], [max_weight]
            cols, turn = [-c], [-1.0]
            if self.tc:
                at = d * p.w_prev.clamp(0.0, self.hi)
                cols += [at - c, at + c]
                turn += [1.0, -1.0]
            if self.st.max_weight is not None:
                cols.append(d * self.hi + c)
                turn.append(1.0)
            return torch.stack(cols, 1), None, d.new_tensor(turn)
        if self.tc:  # flats at a = min(0, w_prev) and b = max(0, w_prev)
            sw, a, b = self.tab["sprev"], d * self.tab["lo"], d * self.tab["up"]
            base = torch.stack([a - c, a - sw * c, b - sw * c, b + c], 1)
            one = torch.ones_like(d)
            return base, torch.stack([-one, sw, sw, one], 1), d.new_tensor([1.0, -1.0, 1.0, -1.0])
        zero = torch.zeros_like(d)  # flat at 0 between slopes -nu and nu
        return torch.stack([zero, zero], 1), torch.stack([zero - 1.0, zero + 1.0], 1), d.new_tensor([1.0, -1.0])

    def evaluate(self, x: torch.Tensor, tab: Optional[dict] = None) -> Point:
        """Everything at the dual point x (B, k+m) (tab: the tables of a part of the batch)."""
        k, tab = self.k, self.tab if tab is None else tab
        t = (tab["mu"] - x[:, k : k + 1]).sub_((x[:, :k].unsqueeze(1) @ tab["FT"]).squeeze(1))  # (B, n)
        nu = x[:, k + 1 :] if not self.st.long_only else None
        w, free = self.prox(t, nu, tab)
        grad = (w.unsqueeze(1) @ tab["Z"]).squeeze(1).sub_(x)  # (F^T w - eta, 1^T w - lambda, -)
        grad[:, k] += x[:, k] - 1.0
        inner = (tab["half_d"] * w - t).mul_(w)  # (B, n) the Lagrangian's minimum per asset
        if self.tc:
            inner.addcmul_((w - tab["w_prev"]).abs_(), tab["c"])
        g = inner.sum(1) - 0.5 * x[:, :k].square().sum(1) - x[:, k]
        if nu is not None:
            gross = w.abs().sum(1) - self.st.leverage
            g += nu[:, 0] * gross
            grad[:, -1] = gross
        return Point(x, t, w, free, g, grad)

    def residual(self, pt: Point) -> torch.Tensor:
        """KKT residual (B,): the dual gradient, where nu = 0 allows a slack leverage."""
        if self.st.long_only:
            return pt.grad.abs().amax(1)
        nu, lev = pt.x[:, -1], pt.grad[:, -1]
        lev = torch.maximum(lev, -lev * (nu > 0))  # |.| when nu > 0, only the excess when nu = 0
        return torch.maximum(pt.grad[:, :-1].abs().amax(1), lev)

    # ------------------------------------------------------------------ Newton step
    def direction(self, pt: Point) -> torch.Tensor:
        """Newton ascent direction (B, k+m): (I + Z^T diag(free/d) Z) delta = grad.

        No ridge where the matrix is regular, so that the last steps are exact Newton steps
        (residual ~1e-16 at the certificate).  The budget / leverage block gets 1e-14 on its
        diagonal: with no weight free it is 0 (g is piecewise linear in lambda there; the line
        search then finds the step along the long direction).  long_short: where every free
        weight has one sign the budget and leverage columns coincide on the free set; those
        elements get a ridge ~ the residual on that block (it vanishes at the solution).
        Elements that rounding still leaves indefinite get 1e-10 of that block's diagonal and a
        second factorisation, failing that a gradient step.  nu stays at 0 (row replaced by the
        identity) while the leverage is slack.
        """
        k = self.k
        a = pt.free.to(self.invd.dtype) * self.invd  # (B, n) curvature of each w_i in t
        if not self.st.long_only:  # (Z, ZT are this solver's own buffers)
            sign = torch.sign(pt.w)
            self.Z[..., -1] = sign
            self.ZT[:, -1] = sign
        M = torch.baddbmm(self.ridge, self.ZT * a.unsqueeze(1), self.Z)  # (B, k+m, k+m)
        rhs = pt.grad
        if not self.st.long_only:
            keep = ((pt.x[:, -1] > 0) | (pt.grad[:, -1] > 0)).to(M.dtype)  # (B,)
            # Every free weight of one sign: the budget and leverage rows coincide on the free
            # set and the model cannot tell lambda from nu apart; a ridge ~ the residual (as
            # much as one typical free weight adds, 0.1 res / d) keeps that step bounded.
            both = M[:, k, k]  # sum of free / d
            one_sign = (M[:, k, k + 1].abs() >= (1.0 - 1e-9) * both) & (keep > 0)
            ridge = 0.1 * self.residual(pt).clamp_max(1.0) * self.invd.mean(1) * one_sign
            M.diagonal(dim1=1, dim2=2)[:, k:] += ridge.unsqueeze(1)
            M[:, -1, :-1] *= keep.unsqueeze(1)
            M[:, :-1, -1] *= keep.unsqueeze(1)
            M[:, -1, -1] += (M[:, -1, -1] - 1.0).mul_(keep - 1.0)  # 1 where the row is dropped
            rhs = rhs.clone()
            rhs[:, -1] *= keep
        chol, info = torch.linalg.cholesky_ex(M)
        if bool((info != 0).any()):
            M.diagonal(dim1=1, dim2=2)[:, k:] *= torch.where(info != 0, 1.0 + 1e-10, 1.0).unsqueeze(1)
            chol, info = torch.linalg.cholesky_ex(M)
        step = torch.cholesky_solve(rhs.unsqueeze(-1), chol).squeeze(-1)
        # Still indefinite: a gradient step keeps such an element moving (the interior point
        # takes it if that does not lead anywhere).
        return torch.where((info == 0).unsqueeze(1), step, rhs)

    def line_max(self, pt: Point, delta: torch.Tensor) -> Point:
        """The Newton step x + delta where it raises g enough, else the maximum of g on that ray.

        phi(alpha) = g(x + alpha delta) is concave.  The full step is kept when it passes the
        Armijo test and phi'(1) >= -0.5 phi'(0) (it did not go far past the maximum); near the
        solution no weight changes piece and it lands on the maximum.  Elsewhere (typically far
        from the solution, where many weights change piece) the step goes exactly to the
        maximum on the ray (:meth:`ray_max`).
        """
        trial = self._step(pt, delta, 1.0)
        s0 = (pt.grad * delta).sum(1)
        rise = trial.g >= pt.g + 1e-4 * s0 - 1e-13 * (1.0 + pt.g.abs())  # Armijo, up to rounding
        past = ~(rise & ((trial.grad * delta).sum(1) >= -CURVATURE * s0))  # NaN counts as past
        if not bool(past.any()):
            return trial
        rows = past.nonzero()[:, 0]
        alpha = self.ray_max(pt, delta, rows)
        if 4 * len(rows) > len(past):  # many: redo the batch
            return self._step(pt, delta, torch.ones_like(s0).unsqueeze(1).index_put_((rows,), alpha))
        put(trial, rows, self._step(take(pt, rows), delta[rows], alpha, self.rows(rows)), slice(None))
        return trial

    def _step(self, pt: Point, delta: torch.Tensor, alpha, tab: Optional[dict] = None) -> Point:
        """The point x + alpha delta (long_short: alpha capped where nu reaches 0)."""
        if not self.st.long_only:
            nu, dnu = pt.x[:, -1:], delta[:, -1:]
            cap = torch.where(dnu < 0, nu / -dnu, torch.inf)  # where nu reaches 0
            alpha = torch.minimum(torch.as_tensor(alpha, dtype=nu.dtype, device=nu.device), cap)
        x = pt.x + alpha * delta
        if not self.st.long_only:
            x[:, -1].clamp_min_(0.0)
        return self.evaluate(x, tab)

    def ray_max(self, pt: Point, delta: torch.Tensor, rows=None) -> torch.Tensor:
        """argmax of phi(alpha) = g(x + alpha delta) over alpha >= 0, (B', 1) for the batch rows
        (None: all), exactly.

        With r_i = F_i . delta_eta + delta_lambda, t_i moves as t_i - alpha r_i and the
        breakpoints of asset i as base + (nu + alpha delta_nu) coef, so it changes piece at
        alpha = u / rho (u = t_i - breakpoint, rho = r_i + delta_nu coef).  Between such
        crossings phi is quadratic with phi'' = -(|delta_eta|^2 + sum over free weights of
        (r_i + delta_nu sign w_i)^2 / d_i), and a crossing adds or removes one term
        (turn rho |rho| / d_i).  Sorted, the crossings give phi' at each of them by prefix sums;
        the maximum is where phi' reaches 0 (linear on that interval, so exact).  The nu >= 0
        cap is applied by the caller (:meth:`_step`).
        """
        def sub(v):
            return v if rows is None else v[rows]

        k, x, delta = self.k, sub(pt.x), sub(delta)
        FT, t, free, w = sub(self.tab["FT"]), sub(pt.t), sub(pt.free), sub(pt.w)
        r = (delta[:, :k].unsqueeze(1) @ FT).squeeze(1) + delta[:, k : k + 1]  # (B', n)
        s0 = (sub(pt.grad) * delta).sum(1, keepdim=True)  # phi'(0) >= 0
        rf = r if self.coef is None else r + delta[:, -1:] * torch.sign(w)
        d2 = delta[:, :k].square().sum(1, keepdim=True)
        kap0 = (free * rf.square() * sub(self.invd)).sum(1, keepdim=True) + d2  # -phi''(0+)
        t, r = t.unsqueeze(1), r.unsqueeze(1)  # (B', 1, n)
        if self.coef is None:
            cross = (t - sub(self.base)).div_(r)  # (B', E, n)
            gain = sub(self.turn_d) * (r * r.abs())
        else:
            coef, nu, dnu = sub(self.coef), x[:, -1:], delta[:, -1:]
            rho = coef * dnu.unsqueeze(-1) + r
            cross = (t - sub(self.base)).sub_(coef * nu.unsqueeze(-1)).div_(rho)
            gain = rho.abs().mul_(rho).mul_(sub(self.turn_d))
        # crossings behind (< 0) or never (NaN, inf) go to the end: 1 / clamp(1 / x, 0) (u = 0: at
        # 0), then BEYOND, where phi' < 0 if the last quadratic piece has a maximum
        cross = cross.reciprocal_().clamp_min_(0.0).reciprocal_().clamp_max_(BEYOND).flatten(1)
        order = argsort_rows(cross)
        at = cross.gather(1, order)  # (B', M): the crossings ahead in increasing order
        gain = gain.flatten(1).gather(1, order)
        del cross, order  # (few large temporaries alive at once: freed memory is refaulted)
        G = gain.cumsum(1)  # curvature gained up to and including each crossing
        slope = gain.mul_(at).cumsum_(1).sub_((G + kap0).mul_(at)).add_(s0)  # phi'(at_j)
        # first crossing past the maximum (M if none), by bisection on the running minimum
        # (slope decreases up to rounding; bool argmax / any are ~10x slower on the CPU)
        j = torch.searchsorted(slope.cummin(1).values.neg_(), torch.zeros_like(s0))
        found = j < at.shape[1]
        j = j.clamp_max_(at.shape[1] - 1)
        prev = (j - 1).clamp_min(0)
        first = j == 0
        begin = torch.where(first, 0.0, at.gather(1, prev))
        kap = torch.where(first, kap0, kap0 + G.gather(1, prev))  # -phi'' on that interval
        alpha = begin + torch.where(first, s0, slope.gather(1, prev)) / kap
        alpha = torch.minimum(alpha, at.gather(1, j))
        # phi' > 0 on the whole ray: the dual is unbounded (an infeasible problem); Newton step
        alpha = torch.where(found, alpha, 1.0)
        return torch.where(s0 > 0, alpha, 0.0)

    # ------------------------------------------------------------------ main loop
    def start(self) -> Point:
        """eta = F^T w_prev (the previous portfolio is a good primal guess), then the budget and
        leverage multipliers.

        long_only: lambda exact, the maximum of g along lambda (the budget holds); solutions
        that hold most weights at 0 or max_weight are then often right at once (2-5x fewer
        Newton steps in the mac_test training problems).  long_short: two Newton steps on
        lambda and nu alone, each with the curvature of its own row (sum over free weights of
        1 / d, at least the largest 1 / d); the leverage is what takes long_short many steps
        (even from the exact eta), and this cut them by 1-2 (an exact search along nu cost more
        than it saved).
        """
        eta = (self.p.w_prev.unsqueeze(1) @ self.p.F).squeeze(1)  # (B, k)
        pt = self.evaluate(torch.cat([eta, eta.new_zeros(eta.shape[0], self.m)], 1))
        if self.st.long_only:
            delta = torch.zeros_like(pt.x)
            delta[:, self.k] = torch.sign(pt.grad[:, self.k])
            return self._step(pt, delta, self.ray_max(pt, delta))
        floor = self.invd.amax(1)
        for _ in range(2):
            slope = torch.maximum((pt.free * self.invd).sum(1), floor)
            x = pt.x.clone()
            x[:, self.k] += pt.grad[:, self.k] / slope
            x[:, -1] = (x[:, -1] + pt.grad[:, -1] / slope).clamp_min(0.0)
            pt = self.evaluate(x)
        return pt

    def finish(self, pt: Point, ok: torch.Tensor) -> Point:
        """One more full Newton step for the certified elements ok (B,), kept where it lowers the
        residual.

        At residual <= tol the pieces are right (up to weakly active weights), so this step is
        exact up to rounding (~1e-15): the result no longer depends on the path taken.  Skipped
        (by :meth:`solve`) when every residual is already below 1e-3 tol: the certifying step
        was such a step (the usual case).
        """
        trial = self._step(pt, torch.where(ok.unsqueeze(1), self.direction(pt), 0.0), 1.0)
        return _select(ok & (self.residual(trial) < self.residual(pt)), trial, pt)

    def solve(self) -> tuple[Point, torch.Tensor]:
        """Newton until the KKT residual <= newton_tol (then :meth:`finish`).

        Returns the final points and which elements are certified (B,) bool.  Never raises for
        slow convergence: those elements are the interior point's job.  Certified elements stop
        moving (step 0) and leave the batch once they are half of it; one host sync per step.
        """
        st = self.st
        pt = self.start()
        res = self.residual(pt)
        out, res_out = clone(pt), res.clone()
        idx, cur = torch.arange(res.shape[0], device=res.device), self
        stop = torch.zeros_like(res, dtype=torch.bool)  # handed over to the interior point
        for it in range(st.newton_max_iter):
            if it == st.newton_checkpoint:
                stop = stop | (res > st.newton_on_track)
            live = (res > st.newton_tol) & ~stop & torch.isfinite(res)
            n_live = int(live.sum())
            if n_live == 0:
                break
            if n_live <= COMPACT_FRACTION * len(live) and len(live) >= COMPACT_MIN:
                put(out, idx, pt, slice(None))
                res_out[idx] = res
                keep = live.nonzero()[:, 0]
                idx, pt, res, stop, live = idx[keep], take(pt, keep), res[keep], stop[keep], live[keep]
                cur = cur.subset(keep)
            pt = cur.line_max(pt, torch.where(live.unsqueeze(1), cur.direction(pt), 0.0))
            res = cur.residual(pt)
        put(out, idx, pt, slice(None))
        res_out[idx] = res
        ok = res_out <= st.newton_tol
        if not bool((ok & (res_out > 1e-3 * st.newton_tol)).any()):  # the last steps were exact
            return out, ok
        return self.finish(out, ok), ok


def _select(pick: torch.Tensor, a: Point, b: Point) -> Point:
    """Per element: a where pick (B,) else b."""
    def sel(u, v):
        return torch.where(pick.view(-1, *([1] * (u.dim() - 1))), u, v)
    return Point(*(sel(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(Point)))


def take(obj, idx):
    """Batch elements idx (index, mask or slice) of a dataclass of tensors; other fields shared."""
    values = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    return dataclasses.replace(obj, **{k: v[idx] for k, v in values.items() if isinstance(v, torch.Tensor)})


def clone(obj):
    """A copy of a dataclass of tensors (tensor fields cloned)."""
    values = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    return dataclasses.replace(obj, **{k: v.clone() for k, v in values.items() if isinstance(v, torch.Tensor)})


def put(out, idx: torch.Tensor, obj, mask) -> None:
    """out[idx] = obj[mask] for every tensor field (in place); mask may be a slice."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, torch.Tensor):
            getattr(out, f.name)[idx] = value[mask]
