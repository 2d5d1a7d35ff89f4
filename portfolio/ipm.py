"""Batched primal-dual interior point for the portfolio QP (the robust stage of the torch backend).

Per batch element, on the scaled problem of :mod:`portfolio.problem`::

    minimise   0.5 w^T Q w - mu^T w + c * sum(t)
    subject to 1^T w = 1,
               t >= |w - w_prev|                      (only if c > 0)
               long_only:  0 <= w <= max_weight
               long_short: a >= |w|,  sum(a) <= leverage

with Q = F F^T + diag(d).  The variables of one asset are the slots ``x[..., :]`` = (w, [t], [a]);
its inequality rows G x <= h are ordered [bounds..., plus rows of the |.| pairs..., minus rows...]
so that pair p bounds aux slot p + 1.  Every row but the leverage row touches one asset, so
eliminating t and a leaves ``M = diag(d + D) + F F^T`` in w (Woodbury: one k x k Cholesky per
element) plus the budget row and, for long_short, the leverage row (kept as a row: its weight
grows without bound when it binds).

Mehrotra predictor-corrector from an infeasible start.  No python loop over the batch; elements
that converge are stored and dropped.  The point is then polished on its active set and certified
by :mod:`portfolio.kkt`.  Lines are written for few, in-place torch calls: on CPU the memory
traffic of fresh (B, n, J) tensors and the per-call overhead set the time, not the flops.
"""

from __future__ import annotations

import dataclasses

import torch

from core.errors import SolverError
from portfolio.ipm_layout import START, IPMState, Layout
from portfolio.problem import QPSettings, Scaled, cholesky_checked, clone, put, take

ACCEPTABLE = 1e-6
"""Residuals (and 1e-2 of it for the gap) accepted at the iteration cap; the polish certifies."""


class InteriorPoint:
    """One batched solve: builds the constant tables once, then iterates Mehrotra steps."""

    def __init__(self, p: Scaled, st: QPSettings, offset: torch.Tensor | None = None):
        self.p, self.st, self.lay = p, st, Layout(st)
        lay, opts = self.lay, dict(dtype=p.mu.dtype, device=p.mu.device)
        # batch positions in the caller's batch, for error messages
        self.offset = torch.arange(p.mu.shape[0], device=p.mu.device) if offset is None else offset
        self.G = torch.tensor(lay.G, **opts)  # (J, V)
        self.GT = self.G.T.contiguous()  # (V, J)
        self.FT = p.F.transpose(1, 2).contiguous()  # (B, k, n)
        self.eye = torch.eye(p.F.shape[2], **opts)
        self.h = lay.h(p.w_prev, st)  # (B, n, J)
        self.cost = torch.zeros(*p.mu.shape, lay.V, **opts)  # (B, n, V) linear cost per slot
        self.cost[..., 0] = -p.mu
        if lay.tc:
            self.cost[..., lay.slot["t"]] = p.c
        self.a = lay.slot.get("a")  # slot of a (long_short)
        self.n_compl = p.mu.shape[1] * lay.J + lay.ls

    def subset(self, idx: torch.Tensor) -> "InteriorPoint":
        """The same solver restricted to batch elements idx."""
        return InteriorPoint(take(self.p, idx), self.st, self.offset[idx])

    def start(self) -> IPMState:
        """Infeasible start: w = 1/n, t = |w - w_prev| + START, a = 1/n, s = z = START."""
        B, n = self.p.mu.shape
        x = torch.full_like(self.cost, 1.0 / n)  # (B, n, V)
        if self.lay.tc:
            x[..., self.lay.slot["t"]] = (1.0 / n - self.p.w_prev).abs() + START
        one = self.p.mu.new_full((B, 1), START)
        return IPMState(x, torch.full_like(self.h, START), torch.full_like(self.h, START),
                        torch.zeros_like(one), one, one.clone())

    # ------------------------------------------------------------------ residuals
    def residuals(self, S: IPMState):
        """Dual (B, n, V), per-asset primal (B, n, J), leverage (B, 1), budget (B, 1)."""
        w = S.x[..., 0]  # (B, n)
        Qw = self.p.F @ (self.FT @ w.unsqueeze(-1))  # (B, n, 1)
        rd = (S.z @ self.G).add_(self.cost)  # (B, n, V)
        rd[..., 0] += Qw[..., 0].addcmul_(self.p.d, w).add_(S.y)
        rp = (S.x @ self.GT).add_(S.s).sub_(self.h)  # (B, n, J)
        rb = w.sum(1, keepdim=True) - 1.0
        rL = rb
        if self.lay.ls:
            rd[..., self.a] += S.zL
            rL = S.x[..., self.a].sum(1, keepdim=True) + S.sL - self.st.leverage
        return rd, rp, rL, rb

    def converged(self, S: IPMState):
        """Per-element convergence (B,) bool, the worst residuals (B, 3) and the residuals."""
        rd, rp, rL, rb = res = self.residuals(S)
        gap = self.gap(S)
        worst = torch.cat([rp.abs().amax((1, 2)).unsqueeze(1), rL.abs(), rb.abs(),
                           rd.abs().amax((1, 2)).unsqueeze(1), gap], 1)  # (B, 5)
        primal = worst[:, :3].amax(1)
        done = (primal <= self.st.tol) & (worst[:, 3] <= self.st.tol) & (worst[:, 4] <= self.st.gap_tol)
        return done, torch.stack([primal, worst[:, 3], worst[:, 4]], 1), res

    def gap(self, S: IPMState) -> torch.Tensor:
        """Mean complementarity (B, 1)."""
        total = (S.s * S.z).sum((1, 2)).unsqueeze(1)
        if self.lay.ls:
            total = total + S.sL * S.zL
        return total / self.n_compl

    # ------------------------------------------------------------------ Newton system
    def factor(self, S: IPMState) -> dict:
        """Factor the reduced Newton system once per iteration (predictor and corrector share it).

        Each |.| pair with weights W+, W- leaves 4 W+ W- / (W+ + W-) >= 0 on w (no cancellation)
        once its aux slot is eliminated.  The leverage row has -(sum 1/Ka + 1/WL) on the diagonal
        of its Schur complement: WL -> inf when it binds, which a rank-1 term could not take.
        """
        lay, nb, P = self.lay, self.lay.nb, self.lay.P
        W = S.z / S.s  # (B, n, J) barrier weights
        diag = self.p.d + _lastsum(W[..., :nb]) if nb else self.p.d
        f: dict = {"W": W}
        if P:
            Wp, Wm = W[..., nb : nb + P], W[..., nb + P :]  # (B, n, P)
            K, C = Wp + Wm, Wm - Wp  # diag of the aux block, w-aux coupling
            f.update(K=K, C=C, CK=C / K)
            diag = diag + _lastsum(Wp * Wm / K).mul_(4.0)
        Dinv = 1.0 / diag  # (B, n)
        DF = Dinv.unsqueeze(-1) * self.p.F  # (B, n, k)
        chol = cholesky_checked((self.FT @ DF).add_(self.eye), "the interior point's capacitance matrix", self.offset)
        f.update(Dinv=Dinv, DF=DF, chol=chol)
        if lay.ls:  # rows of the saddle system: budget, leverage (after eliminating a)
            f["invKa"] = 1.0 / f["K"][..., -1]
            E = torch.stack([torch.ones_like(Dinv), -f["CK"][..., -1]], 1)  # (B, 2, n)
            XE = self._minv(f, E.transpose(1, 2))  # (B, n, 2)
            schur = E @ XE  # (B, 2, 2)
            schur[:, 1, 1] += f["invKa"].sum(1) + S.sL[:, 0] / S.zL[:, 0]
            f.update(E=E, XE=XE, schur_inv=torch.linalg.inv(schur))
        else:
            X1 = self._minv(f, torch.ones_like(Dinv).unsqueeze(-1))  # (B, n, 1)
            f.update(X1=X1, s1=X1.sum(1))  # (B, 1)
        return f

    def _minv(self, f: dict, r: torch.Tensor) -> torch.Tensor:
        """(diag + F F^T)^{-1} r by Woodbury; r (B, n, c) -> (B, n, c)."""
        Dr = f["Dinv"].unsqueeze(-1) * r  # (B, n, c)
        return Dr.sub_(f["DF"] @ torch.cholesky_solve(self.FT @ Dr, f["chol"]))

    def solve_kkt(self, f: dict, rx: torch.Tensor, ry: torch.Tensor):
        """Solve (H + G^T W G + WL e_a e_a^T) dx + 1 dy = rx,  1^T dw = ry.

        Returns dx (B, n, V), dy (B, 1) and zeta (B, 1) = the leverage row's multiplier step
        minus its constant part (long_short) or None.
        """
        P = self.lay.P
        raux = rx[..., 1:]  # (B, n, P)
        rw = rx[..., 0] - _lastsum(f["CK"] * raux) if P else rx[..., 0]
        Xr = self._minv(f, rw.unsqueeze(-1))  # (B, n, 1)
        zeta = None
        if self.lay.ls:
            rhs = torch.cat([ry, -(raux[..., -1] * f["invKa"]).sum(1, keepdim=True)], 1)  # (B, 2)
            lam = f["schur_inv"] @ (f["E"] @ Xr - rhs.unsqueeze(-1))  # (B, 2, 1)
            dw = Xr.sub_(f["XE"] @ lam)  # (B, n, 1)
            dy, zeta = lam[:, 0], lam[:, 1]
        else:
            dy = (Xr.sum(1) - ry) / f["s1"]  # (B, 1)
            dw = Xr - f["X1"] * dy.unsqueeze(1)
        if not P:
            return dw, dy, zeta
        daux = raux - f["C"] * dw  # (B, n, P) before dividing by K
        if zeta is not None:
            daux[..., -1] -= zeta
        return torch.cat([dw, daux / f["K"]], -1), dy, zeta

    def direction(self, S: IPMState, res, f: dict, rc: torch.Tensor, rcL: torch.Tensor) -> IPMState:
        """Newton direction for complementarity residuals rc = s z - target (B, n, J)."""
        rd, rp, rL, rb = res
        q = (S.z * rp).sub_(rc).div_(S.s)  # (B, n, J)
        rx = (q @ self.G).add_(rd).neg_()  # (B, n, V)
        qL = None
        if self.lay.ls:
            qL = (S.zL * rL - rcL) / S.sL  # (B, 1)
            rx[..., self.a] -= qL
        dx, dy, zeta = self.solve_kkt(f, rx, -rb)
        Gdx = dx @ self.GT  # (B, n, J)
        ds = (rp + Gdx).neg_()
        dz = (f["W"] * Gdx).add_(q)
        dsL = dzL = torch.zeros_like(dy)
        if self.lay.ls:
            # dzL = qL + WL sum(da) = qL + zeta: the product form loses all digits once WL ~ 1e14.
            dsL, dzL = -rL - dx[..., self.a].sum(1, keepdim=True), qL + zeta
        self._repair_pairs(dz, f["W"], rd, dzL)
        return IPMState(dx, ds, dz, dy, dsL, dzL)

    def _repair_pairs(self, dz, W, rd, dzL) -> None:
        """Recompute the multiplier step of the stiffer row of each |.| pair from its slot's dual row.

        dz = q + W G dx multiplies rounding errors in dx by W (-> 1e14 near the end) and the aux
        slots' dual rows (cost - z+ - z- [+ zL] = 0) then drift.  The linearised row gives the sum
        dz+ + dz- exactly; the row with the smaller W (accurate product) supplies the other.
        """
        nb, P = self.lay.nb, self.lay.P
        if not P:
            return
        total = rd[..., 1:].clone()  # (B, n, P)
        if self.lay.ls:
            total[..., -1] += dzL
        dp, dm = dz[..., nb : nb + P], dz[..., nb + P :]
        err = total - dp - dm
        plus_stiff = (W[..., nb : nb + P] >= W[..., nb + P :]).to(dz.dtype)  # 1 = fix dz+ from the sum
        dp.addcmul_(plus_stiff, err)
        dm.addcmul_(1.0 - plus_stiff, err)

    @staticmethod
    def max_step(S: IPMState, D: IPMState) -> torch.Tensor:
        """Largest alpha in [0, 1] keeping s, z, sL, zL >= 0, per element (B, 1).

        alpha = 1 / max(1, max(-dv / v)): no torch.where, ~10x slower than arithmetic on CPU.
        """
        r = torch.minimum((D.s / S.s).amin((1, 2)), (D.z / S.z).amin((1, 2))).unsqueeze(1)
        r = torch.minimum(r, torch.minimum(D.sL / S.sL, D.zL / S.zL))
        return (-r).clamp_min_(1.0).reciprocal_()

    @staticmethod
    def _step(S: IPMState, D: IPMState, alpha: torch.Tensor) -> None:
        """S += alpha D in place (alpha (B, 1) per element)."""
        a3 = alpha.unsqueeze(-1)
        S.x.addcmul_(a3, D.x), S.s.addcmul_(a3, D.s), S.z.addcmul_(a3, D.z)
        S.y.addcmul_(alpha, D.y), S.sL.addcmul_(alpha, D.sL), S.zL.addcmul_(alpha, D.zL)

    # ------------------------------------------------------------------ main loop
    def iterate(self, S: IPMState, res) -> None:
        """One Mehrotra predictor-corrector step, in place."""
        f = self.factor(S)
        sz, szL = S.s * S.z, S.sL * S.zL
        aff = self.direction(S, res, f, sz, szL)
        a_aff = self.max_step(S, aff)  # (B, 1)
        a3 = a_aff.unsqueeze(-1)
        gap_aff = ((S.s + a3 * aff.s) * (S.z + a3 * aff.z)).sum((1, 2)).unsqueeze(1)
        if self.lay.ls:
            gap_aff = gap_aff + (S.sL + a_aff * aff.sL) * (S.zL + a_aff * aff.zL)
        mu_now = self.gap(S)  # (B, 1)
        target = (gap_aff / self.n_compl / mu_now).clamp_(0.0, 1.0).pow_(3).mul_(mu_now)  # sigma mu
        rc = (aff.s * aff.z).add_(sz).sub_(target.unsqueeze(-1))
        rcL = szL + aff.sL * aff.zL - target
        D = self.direction(S, res, f, rc, rcL)
        self._step(S, D, self.max_step(S, D).mul_(0.99))

    def solve(self) -> IPMState:
        """Iterate until every element converges; raises SolverError at the iteration cap.

        Converged elements are stored and dropped from the batch, so the last iterations (where
        a few elements lag behind) cost only what those elements cost.  The returned state has
        y, sL, zL of shape (B,).
        """
        S = self.start()
        out = clone(S)  # final states, filled as elements converge
        idx = torch.arange(S.y.shape[0], device=S.y.device)  # positions of the live elements
        cur = self
        for it in range(self.st.max_iter):
            done, worst, res = cur.converged(S)
            if bool(done.any()):
                put(out, idx[done], S, done)
                if bool(done.all()):
                    out.iterations = it
                    return dataclasses.replace(out, y=out.y[:, 0], sL=out.sL[:, 0], zL=out.zL[:, 0])
                live = ~done
                idx, S = idx[live], take(S, live)
                cur, res = self.subset(idx), tuple(r[live] for r in res)
            if not bool(torch.isfinite(worst).all()):
                break
            cur.iterate(S, res)
        # At the cap: rounding can stall the last digits (primal ~1e-7); such points still tell
        # the active set apart and the polish certifies (or refuses) them.  Others are failures.
        done, worst, _ = cur.converged(S)
        done = done | ((worst[:, :2] <= ACCEPTABLE).all(1) & (worst[:, 2] <= ACCEPTABLE * 1e-2))
        if bool(done.all()):
            put(out, idx, S, slice(None))
            out.iterations = self.st.max_iter
            return dataclasses.replace(out, y=out.y[:, 0], sL=out.sL[:, 0], zL=out.zL[:, 0])
        raise _not_converged(cur.offset[~done], worst[~done], self.st)


def _lastsum(x: torch.Tensor) -> torch.Tensor:
    """x.sum(-1) for a last dim of 1-2: explicit adds are ~20x faster than a CPU reduction here."""
    out = x[..., 0]
    for j in range(1, x.shape[-1]):
        out = out + x[..., j]
    return out


def _not_converged(bad_idx: torch.Tensor, worst: torch.Tensor, st: QPSettings) -> SolverError:
    """The error for elements (caller's indices bad_idx) still unconverged; worst (len(bad), 3)."""
    bad = bad_idx.tolist()
    p, r, g = worst[0].tolist()
    hint = ""
    if p > 1e-6:
        hint = (" A primal residual that does not vanish means the constraints may not all hold"
                " (infeasible: e.g. max_weight * n_assets < 1): check portfolio.max_weight / leverage.")
    return SolverError(
        f"torch portfolio solver: batch element {bad[0]} (of {len(bad)} failing: {bad[:8]}) did not converge"
        f" in {st.max_iter} interior-point iterations: primal residual {p:.2e}, dual residual {r:.2e},"
        f" complementarity {g:.2e} (tolerances {st.tol:.0e} / {st.gap_tol:.0e}, scaled problem).{hint}"
    )
