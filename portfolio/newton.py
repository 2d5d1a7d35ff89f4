"""Exact batched solve of the portfolio QP: semismooth Newton on its small smooth dual.

The dual function g and its gradient are :class:`portfolio.dual.DualFunction`.  Newton on it
(Hessian I + Z^T diag(free / d) Z with Z = [F, 1, sign w]) identifies the pieces and then lands
on the optimum exactly; the stopping test is the KKT certificate (the dual gradient).
Globalisation: the full step is kept when it passes Armijo and does not go far past the maximum
on its ray; otherwise the step goes to that maximum exactly (:meth:`DualNewton.ray_max`: along a
ray g is piecewise quadratic, each asset changes piece at known points, which are sorted and
summed).  The start is eta = F^T w_prev with the budget multiplier exact (long_only) or two
cheap Newton steps on the budget and leverage multipliers (long_short).  No python loop over the
batch; certified elements leave the batch; the solve is overhead bound on the CPU (hundreds of
small ops), so the code favours few ops and the (B, 1, k) @ (B, k, n) product layout.

This is the fast stage of the torch backend (3-7 steps at n = 104 when the idiosyncratic
variances d are not small next to the factor variances, ~12 when they are 1% of them).  With
d -> 0 the dual's curvature 1/d grows, its pieces get dense and Newton crawls; such elements
(median d below ``newton_min_ratio`` of the median factor variance, still far from the
certificate at ``newton_checkpoint``, or not certified after ``newton_max_iter`` steps) are
solved by the interior point (:mod:`portfolio.ipm`) instead, which does not mind.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch

from portfolio.dual import DualFunction, Point, argsort_rows
from portfolio.problem import clone, put, take

CURVATURE = 0.5
"""The full Newton step is kept when phi'(1) >= -CURVATURE phi'(0) (and Armijo holds)."""
BEYOND = 1e150
"""Stands for the crossings that never come in the exact line search (finite: 0 * BEYOND = 0)."""
COMPACT_MIN = 16
"""Batches smaller than this are not compacted when elements finish (the indexing costs more)."""
COMPACT_FRACTION = 0.5
"""Finished elements leave the batch once at most this fraction of it is still running."""


class DualNewton(DualFunction):
    """One batched solve (the scaled problem p under settings st): Newton steps on the dual."""

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

