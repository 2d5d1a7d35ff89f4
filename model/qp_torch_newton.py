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
Z = [F, 1, sign w]) with a line search identifies the pieces and then lands on the optimum
exactly: at a zero gradient w is the exact primal optimum (each w_i is an exact prox), so the
stopping test is the KKT certificate.  No python loop over the batch; certified elements leave
the batch.

This is the fast stage of the torch backend (~7-15 steps when the idiosyncratic variances d
are not small next to the factor variances).  With d -> 0 the dual's curvature 1/d grows, its
pieces get dense and Newton crawls; such elements (median d below ``newton_min_ratio`` of the
median factor variance, still far from the certificate at ``newton_checkpoint``, or not
certified after ``newton_max_iter`` steps) are solved by the interior point
(:mod:`model.qp_torch_ipm`) instead, which does not mind.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch


@dataclass(frozen=True)
class QPSettings:
    """Static problem data of the torch backend (from :class:`model.config.PortfolioConfig`)."""

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
    newton_max_iter: int = 20
    """Dual Newton budget; elements not certified by then go to the interior point."""
    newton_checkpoint: int = 10
    """After this many Newton steps, elements whose residual is still above newton_on_track go
    to the interior point at once (Newton would crawl)."""
    newton_on_track: float = 1e-2
    newton_min_ratio: float = 0.2
    """Elements whose median idiosyncratic variance is below this fraction of the median factor
    variance go straight to the interior point: their dual is too ill-conditioned for Newton."""
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


def scale_problem(mu, cov_factor, cov_diag, w_prev, st: QPSettings) -> Scaled:
    """Divide the objective by its largest coefficient (the minimiser does not change)."""
    two_gamma = 2.0 * st.risk_aversion
    var = two_gamma * (cov_diag + cov_factor.square().sum(-1))  # (B, n) diag of 2 gamma Sigma
    scale = torch.maximum(mu.abs().amax(1), var.amax(1)).clamp_min(st.tc_rate)  # (B,)
    scale = scale.clamp_min(1e-300).unsqueeze(1)  # (B, 1)
    return Scaled(
        mu=mu / scale,
        F=cov_factor * (two_gamma / scale).sqrt().unsqueeze(2),
        d=two_gamma * cov_diag / scale,
        c=st.tc_rate / scale,
        w_prev=w_prev,
        scale=scale,
    )


@dataclass
class Point:
    """A dual point x = (eta, lambda[, nu]) (B, k+m) and what it implies."""

    x: torch.Tensor  # (B, k+m)
    t: torch.Tensor  # (B, n)   mu - F eta - lambda
    w: torch.Tensor  # (B, n)   the primal minimiser of the Lagrangian
    free: torch.Tensor  # (B, n) bool: w_i strictly inside a linear piece of phi_i
    g: torch.Tensor  # (B, 1)   dual objective
    grad: torch.Tensor  # (B, k+m)


class DualNewton:
    """One batched solve (the scaled problem p under settings st)."""

    def __init__(self, p: Scaled, st: QPSettings):
        self.p, self.st = p, st
        self.k = p.F.shape[2]
        self.m = 1 if st.long_only else 2  # budget [, leverage]
        self.FT = p.F.transpose(1, 2)  # (B, k, n)
        self.Z0 = torch.cat([p.F, torch.ones_like(p.mu).unsqueeze(-1)], -1)  # (B, n, k+1) [F, 1]
        self.tc = st.tc_rate > 0
        self.hi = st.max_weight if st.max_weight is not None else float("inf")

    def subset(self, idx: torch.Tensor) -> "DualNewton":
        return DualNewton(take(self.p, idx), self.st)

    # ------------------------------------------------------------------ the separable part
    def prox(self, t: torch.Tensor, nu: Optional[torch.Tensor]):
        """w_i = argmin 0.5 d_i w^2 - t_i w + phi_i(w) and whether it is on a linear piece."""
        p, d = self.p, self.p.d
        if self.st.long_only:
            if self.tc:
                r = t - d * p.w_prev
                excess = (r.abs() - p.c).clamp_min_(0.0)  # soft threshold around the kink w_prev
                u = (torch.sign(r) * excess).div_(d).add_(p.w_prev)
                free = excess > 0
            else:
                u, free = t / d, torch.ones_like(t, dtype=torch.bool)
            return u.clamp(0.0, self.hi), free & (u > 0) & (u < self.hi)
        # long_short: kinks at a = min(0, w_prev) and b = max(0, w_prev); outer slopes -+(c + nu),
        # middle slope m.  w = min(uL, a) + clamp(uM, a, b) + max(uR, b) - a - b (arithmetic only).
        c = p.c if self.tc else torch.zeros_like(nu)
        prev = p.w_prev if self.tc else torch.zeros_like(t)
        a, b = prev.clamp_max(0.0), prev.clamp_min(0.0)
        outer = c + nu  # (B, 1)
        mid = torch.sign(prev) * (nu - c)  # (B, n) slope strictly between the kinks
        low, up = d * a, d * b
        w = torch.minimum((t + outer) / d, a) + torch.maximum(torch.minimum((t - mid) / d, b), a)
        w = w.add_(torch.maximum((t - outer) / d, b)).sub_(a).sub_(b)
        free = (t < low - outer) | ((t > low + mid) & (t < up + mid)) | (t > up + outer)
        return w, free

    def evaluate(self, x: torch.Tensor) -> Point:
        """Everything at the dual point x (B, k+m)."""
        p, k = self.p, self.k
        eta, lam = x[:, :k], x[:, k : k + 1]
        t = p.mu - (p.F @ eta.unsqueeze(-1)).squeeze(-1) - lam  # (B, n)
        nu = x[:, k + 1 : k + 2] if not self.st.long_only else None
        w, free = self.prox(t, nu)
        inner = (0.5 * p.d * w - t).mul_(w)  # (B, n)
        if self.tc:
            inner.addcmul_(p.c.expand_as(w), (w - p.w_prev).abs())
        g = inner.sum(1, keepdim=True) - 0.5 * eta.square().sum(1, keepdim=True) - lam
        grads = [(self.FT @ w.unsqueeze(-1)).squeeze(-1) - eta, w.sum(1, keepdim=True) - 1.0]
        if nu is not None:
            gross = w.abs().sum(1, keepdim=True) - self.st.leverage
            g = g + nu * gross
            grads.append(gross)
        return Point(x, t, w, free, g, torch.cat(grads, 1))

    def residual(self, pt: Point) -> torch.Tensor:
        """KKT residual (B,): the dual gradient, where nu = 0 allows a slack leverage."""
        if self.st.long_only:
            return pt.grad.abs().amax(1)
        nu, lev = pt.x[:, -1], pt.grad[:, -1]
        lev = torch.maximum(lev, -lev * (nu > 0))  # |.| when nu > 0, only the excess when nu = 0
        return torch.maximum(pt.grad[:, :-1].abs().amax(1), lev)

    # ------------------------------------------------------------------ Newton step
    def direction(self, pt: Point, res: torch.Tensor) -> torch.Tensor:
        """Newton ascent direction (B, k+m): (I + Z^T diag(free/d) Z) delta = grad.

        The budget / leverage block gets a ridge of 0.1 * residual * mean(1/d) (+ 1e-10 of its
        diagonal against rounding): with few weights free that block underestimates the
        curvature met as soon as weights cross breakpoints (with none free it is 0, g being
        piecewise linear there), and plain Newton overshoots.  The ridge vanishes at the
        solution, so the last steps are pure Newton.  nu stays at 0 (row replaced by the
        identity) while the leverage is slack.
        """
        p, k = self.p, self.k
        a = pt.free.to(p.d.dtype) / p.d  # (B, n) curvature of each w_i in t
        Z = self.Z0  # (B, n, k+m): [F, 1] or [F, 1, sign w]
        if not self.st.long_only:
            Z = torch.cat([Z, torch.sign(pt.w).unsqueeze(-1)], -1)
        M = Z.transpose(1, 2) @ (a.unsqueeze(-1) * Z)  # (B, k+m, k+m)
        diag = M.diagonal(dim1=1, dim2=2)
        # ridge ~ 0.1 * residual * the curvature of one typical free weight (1/d)
        ridge = diag[:, k:] * 1e-10 + (0.1 * res.clamp_max(1.0) * (1.0 / p.d).mean(1) + 1e-14).unsqueeze(1)
        diag[:, :k] += 1.0
        diag[:, k:] += ridge
        rhs = pt.grad
        if not self.st.long_only:
            keep = ((pt.x[:, -1] > 0) | (pt.grad[:, -1] > 0)).to(M.dtype).unsqueeze(1)  # (B, 1)
            M[:, -1, :] *= keep
            M[:, :, -1] *= keep
            M[:, -1, -1] += 1.0 - keep[:, 0]
            rhs = torch.cat([rhs[:, :-1], rhs[:, -1:] * keep], 1)
        chol, info = torch.linalg.cholesky_ex(M)
        step = torch.cholesky_solve(rhs.unsqueeze(-1), chol).squeeze(-1)
        # Rounding can make M indefinite when the leverage and budget columns coincide on the
        # free set; a gradient step keeps such an element moving (the interior point catches it).
        return torch.where((info == 0).unsqueeze(1), step, rhs)

    def line_search(self, pt: Point, delta: torch.Tensor) -> Point:
        """Step along delta to (near) the maximum of the concave g on that line.

        phi(alpha) = g(x + alpha delta) is concave and piecewise quadratic, so its slope is
        piecewise linear and decreasing: the full step is kept when g still rises there (or has
        risen enough, Armijo), otherwise regula falsi (Illinois) on the slope brackets the
        maximum.  A trial is accepted when Armijo holds and the slope has fallen to no less than
        -0.5 of its start (curvature condition), usually within 1-2 trials.  nu is projected on
        nu >= 0 along the way.
        """
        B = pt.x.shape[0]
        slope0 = (pt.grad * delta).sum(1, keepdim=True)  # > 0: ascent direction
        alpha, lo, hi = torch.ones_like(pt.g), torch.zeros_like(pt.g), torch.ones_like(pt.g)
        s_lo, s_hi = slope0.clone(), torch.zeros_like(pt.g)
        out, todo, side = pt, torch.ones(B, dtype=torch.bool, device=pt.x.device), torch.zeros_like(pt.g)
        for _ in range(40):
            x = pt.x + alpha * delta
            if not self.st.long_only:
                x[:, -1].clamp_min_(0.0)
            trial = self.evaluate(x)
            step = x - pt.x
            slope = (trial.grad * step).sum(1, keepdim=True) / alpha  # phi'(alpha)
            armijo = trial.g >= pt.g + 1e-4 * (pt.grad * step).sum(1, keepdim=True) - 1e-13 * (1.0 + pt.g.abs())
            ok = (armijo & (slope >= -0.5 * slope0))[:, 0] & todo
            if out is pt and bool(ok.all()):  # the usual case: every full step accepted
                return trial
            out = _select(ok, trial, out)
            todo = todo & ~ok
            if not bool(todo.any()):
                return out
            past = slope < 0  # beyond the maximum on this line: a new upper end
            lo, s_lo = torch.where(past, lo, alpha), torch.where(past, s_lo, slope)
            hi, s_hi = torch.where(past, alpha, hi), torch.where(past, slope, s_hi)
            # Illinois: halve the slope kept at the end that did not move, so the bracket shrinks
            side_now = past.to(alpha.dtype) * 2 - 1  # +1 moved hi, -1 moved lo
            s_lo = torch.where((side_now == side) & past, 0.5 * s_lo, s_lo)
            s_hi = torch.where((side_now == side) & ~past, 0.5 * s_hi, s_hi)
            side = side_now
            falsi = lo + (hi - lo) * s_lo / (s_lo - s_hi).clamp_min(1e-300)
            span = hi - lo
            alpha = torch.where(todo.unsqueeze(1), falsi.clamp(lo + 0.01 * span, hi - 0.01 * span), alpha)
        return out  # bracket collapsed to rounding; the budget sends the element on

    # ------------------------------------------------------------------ main loop
    def start(self) -> Point:
        """eta = F^T w_prev (the previous portfolio is a good primal guess), lambda = nu = 0."""
        eta = (self.FT @ self.p.w_prev.unsqueeze(-1)).squeeze(-1)  # (B, k)
        return self.evaluate(torch.cat([eta, eta.new_zeros(eta.shape[0], self.m)], 1))

    def finish(self, pt: Point, res: torch.Tensor) -> Point:
        """One more full Newton step on the identified pieces, kept where it lowers the residual.

        At residual <= tol the pieces are right (up to weakly active weights), so this step is
        exact up to rounding (~1e-15): the result no longer depends on the path taken.
        """
        x = pt.x + self.direction(pt, res)
        if not self.st.long_only:
            x[:, -1].clamp_min_(0.0)
        trial = self.evaluate(x)
        return _select(self.residual(trial) < res, trial, pt)

    def solve(self) -> tuple[Point, torch.Tensor]:
        """Newton until the KKT residual <= newton_tol; converged elements leave the batch.

        Returns the final points (B rows; rows of uncertified elements hold their last iterate)
        and which elements are certified (B,) bool.  Never raises for slow convergence: those
        elements are the interior point's job.
        """
        pt = self.start()
        out = clone(pt)
        ok = torch.zeros_like(pt.free[:, 0])
        idx = torch.arange(pt.x.shape[0], device=pt.x.device)
        cur = self
        for it in range(self.st.newton_max_iter):
            res = cur.residual(pt)
            done = res <= self.st.newton_tol
            if it == self.st.newton_checkpoint:  # hand the crawling elements over now
                slow = ~done & (res > self.st.newton_on_track)
                if bool(slow.any()):
                    keep = ~slow
                    if not bool(keep.any()):
                        break
                    idx, pt, res, done = idx[keep], take(pt, keep), res[keep], done[keep]
                    cur = self.subset(idx)
            if bool(done.any()):
                put(out, idx[done], pt, done)
                ok[idx[done]] = True
                if bool(done.all()):
                    break
                live = ~done
                idx, pt, res = idx[live], take(pt, live), res[live]
                cur = self.subset(idx)
            bad = ~torch.isfinite(res)
            if bool(bad.all()):
                break
            pt = cur.line_search(pt, cur.direction(pt, torch.where(bad, 1.0, res)))
        if bool(ok.any()):  # one batched finishing step for every certified element
            sel = ok.nonzero()[:, 0]
            sub, done_pts = self.subset(sel), take(out, sel)
            put(out, sel, sub.finish(done_pts, sub.residual(done_pts)), slice(None))
        return out, ok


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
