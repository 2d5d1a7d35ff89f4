"""Active-set polish and KKT certificate for the interior-point stage of the torch backend.

Used for the elements the dual Newton stage (:mod:`portfolio.newton`) does not certify.
After the interior point (:mod:`portfolio.ipm`) every asset is either *fixed* at a
breakpoint of its piecewise-linear cost (a bound 0 / max_weight, the no-trade kink w_prev, the
leverage kink 0) or *free* on a linear piece with a known slope.  On that active set the
optimum solves the equality-constrained QP ("active KKT system")::

    [P Q P + (I - P)   P E^T] [x]   [P r]        w = x + a   (a = fixed values, 0 on free)
    [E P               0    ] [y] = [e - E a]    P = diag(free)

with Q = F F^T + diag(d), r = mu - c * slope - Q a, E = [1; sign(w) if the leverage binds].
The polished w is exact to rounding; it is accepted only with a KKT certificate (primal
feasibility + every g_i = mu_i - (Q w)_i - lambda inside the subdifferential of asset i's cost).
A wrong guess of the interior point's active set is corrected by primal active-set steps.
The active set and its linear solve are :mod:`portfolio.active_set`.
"""

from __future__ import annotations

import torch

from core.errors import SolverError
from portfolio.active_set import ActiveSet, q_times, solve_active_kkt
from portfolio.constraints import held_by_bound
from portfolio.ipm import InteriorPoint
from portfolio.ipm_layout import IPMState
from portfolio.problem import clone, put, take

PRIMAL_TOL = 1e-9
"""Certificate: budget, bounds and leverage of the polished point (weights are O(1))."""
DUAL_TOL = 1e-8
"""Certificate: subgradient condition of the scaled problem (its data are O(1))."""
FACE_TOL = 1e-7
"""Certificate: budget and leverage met by the face minimiser.  Rounding in nearly singular faces
reached 2e-8 (idiosyncratic variances 1e-4 of the factor variance); faces whose equality rows
contradict each other (budget and leverage rows equal on the free set) missed by 1e-6 - 1e-5 in
the stress runs and used to be returned."""
GREEDY_PASSES = 2
"""Active-set steps that fix every weight leaving its piece at once (fast, may cycle); later
steps fix only the first weight hit, which cannot cycle."""
MAX_PASSES = 30
"""Active-set steps after the interior point before giving up (typically 1-3 are used)."""


def _side(x, right: bool):
    """Slope of |x| just right (or left) of x, as float +-1."""
    return 2.0 * (x >= 0 if right else x > 0).to(x.dtype) - 1.0


def classify(ipm: InteriorPoint, S: IPMState) -> ActiveSet:
    """Active set of a converged interior point.

    A row is active where its multiplier exceeds its slack.  An asset with several active
    breakpoints (0, max_weight, the kink w_prev; they can nearly coincide) is fixed at the one
    nearest its interior-point weight.
    """
    lay, st, wp = ipm.lay, ipm.st, ipm.p.w_prev
    act = S.z > S.s  # (B, n, J)
    w = S.x[..., 0]  # (B, n)
    cand, where_ = [], []  # candidate fixed values and where they are active
    if "lo" in lay.row:
        cand.append(torch.zeros_like(w)), where_.append(act[..., lay.row["lo"]])
    if "hi" in lay.row:
        cand.append(torch.full_like(w, st.max_weight)), where_.append(act[..., lay.row["hi"]])
    if lay.ls:  # the kink of |w| at 0
        cand.append(torch.zeros_like(w)), where_.append(act[..., lay.row["ls+"]] & act[..., lay.row["ls-"]])
    if lay.tc:
        cand.append(wp), where_.append(act[..., lay.row["tc+"]] & act[..., lay.row["tc-"]])
    values, active = torch.stack(cand, -1), torch.stack(where_, -1)  # (B, n, c)
    dist = torch.where(active, (values - w.unsqueeze(-1)).abs(), torch.inf)
    pick = dist.argmin(-1, keepdim=True)  # (B, n, 1)
    fixed = active.any(-1)
    value = torch.where(fixed, values.gather(-1, pick).squeeze(-1), 0.0)
    at_prev = fixed & (pick.squeeze(-1) == len(cand) - 1) if lay.tc else torch.zeros_like(fixed)
    slope, sign = torch.zeros_like(value), torch.sign(value)
    if lay.tc:
        zp, zm = S.z[..., lay.row["tc+"]], S.z[..., lay.row["tc-"]]
        slope = torch.where(fixed, 0.0, 2.0 * (zp >= zm).to(zp.dtype) - 1.0)
    lev = torch.zeros_like(fixed[:, 0])
    if lay.ls:
        zp, zm = S.z[..., lay.row["ls+"]], S.z[..., lay.row["ls-"]]
        sign = torch.where(fixed, torch.sign(value), 2.0 * (zp >= zm).to(zp.dtype) - 1.0)
        lev = S.zL > S.sL
    return ActiveSet(~fixed, value, at_prev, slope, sign, lev)


def polish(ipm: InteriorPoint, S: IPMState, A: ActiveSet):
    """Exact minimiser on the active set (scaled problem; w does not depend on the scale).

    Returns w (B, n) and multipliers (lambda, nu) (B, 2).  Where the free set leaves them open
    (no free asset, or all free weights on one side of 0 with the leverage binding) the open
    direction is taken from the interior point, so that the certificate can use them.
    """
    p, ls = ipm.p, ipm.lay.ls
    rhs = p.mu - p.c * A.slope - q_times(p.F, p.d, A.value)  # (B, n)
    E, e = A.rows(ipm.st.leverage, ls)
    x, y, null = solve_active_kkt(p.F, p.d, A.free, E, rhs, e)
    y_ipm = torch.stack([S.y, S.zL * A.lev], 1)[:, : y.shape[1]]  # (B, m)
    y = y + (null @ y_ipm.unsqueeze(-1)).squeeze(-1)
    if not ls:
        y = torch.cat([y, torch.zeros_like(y)], 1)
    return x + A.value, y


def _segment(ipm: InteriorPoint, A: ActiveSet):
    """Interval (lower, upper) (B, n) of the linear piece a free weight was assumed to lie on."""
    st, wp = ipm.st, ipm.p.w_prev
    lower, upper = torch.full_like(wp, -torch.inf), torch.full_like(wp, torch.inf)
    if st.long_only:
        lower = torch.zeros_like(wp)
        if st.max_weight is not None:
            upper = torch.full_like(wp, st.max_weight)
    if ipm.lay.tc:
        lower = torch.where(A.slope > 0, torch.maximum(lower, wp), lower)
        upper = torch.where(A.slope < 0, torch.minimum(upper, wp), upper)
    if ipm.lay.ls:
        lev = A.lev.unsqueeze(1)
        lower = torch.where(lev & (A.sign > 0), lower.clamp_min(0.0), lower)
        upper = torch.where(lev & (A.sign < 0), upper.clamp_max(0.0), upper)
    return lower, upper


def _subgradient(ipm: InteriorPoint, b: torch.Tensor, nu: torch.Tensor):
    """[left, right] slopes (B, n) of each asset's cost at exact breakpoints b (bounds: +-inf)."""
    p, st = ipm.p, ipm.st
    left, right = torch.zeros_like(b), torch.zeros_like(b)
    if ipm.lay.tc:
        left = left + p.c * _side(b - p.w_prev, False)
        right = right + p.c * _side(b - p.w_prev, True)
    if ipm.lay.ls:
        left = left + nu * _side(b, False)
        right = right + nu * _side(b, True)
    else:
        left = torch.where(b <= 0, -torch.inf, left)
        if st.max_weight is not None:
            right = torch.where(b >= st.max_weight, torch.inf, right)
    return left, right


def _free_towards(ipm: InteriorPoint, A: ActiveSet, go_right, go_left):
    """Slopes and signs of fixed weights freed towards the side their subgradient pulls to."""
    b, wp = A.value, ipm.p.w_prev
    slope = torch.where(go_right, _side(b - wp, True), _side(b - wp, False)) * ipm.lay.tc
    sign = torch.where(go_right, _side(b, True), _side(b, False))
    moved = go_right | go_left
    return torch.where(moved, slope, A.slope), torch.where(moved, sign, A.sign)


def _dual_moves(ipm: InteriorPoint, A: ActiveSet, w_pol, y, blocked):
    """Which fixed weight to free (B, n) x2 (towards right / left), the dual violation (B,), nu (B,).

    Only where the face minimiser was reached (not blocked); g = mu - Q w - lambda must lie in
    the subgradient [left, right] of each fixed weight's cost.
    """
    p = ipm.p
    lam, nu = y[:, 0], torch.where(A.lev, y[:, 1], 0.0)  # (B,) budget and leverage multipliers
    g = p.mu - q_times(p.F, p.d, w_pol) - lam.unsqueeze(1)  # (B, n)
    left, right = _subgradient(ipm, A.value, nu.unsqueeze(1))
    fixed, reached = ~A.free, ~blocked.unsqueeze(1)
    excess = torch.where(fixed & reached, torch.maximum(left - g, g - right), 0.0)  # (B, n)
    # Free only the worst weight per step: freeing several at once can cycle at degenerate points.
    worst = excess == excess.amax(1, keepdim=True)
    go_right = worst & (g > right + DUAL_TOL) & fixed & reached
    go_left = worst & (g < left - DUAL_TOL) & fixed & reached
    dual = torch.where(fixed, torch.maximum(left - g, g - right).clamp_min(0.0), 0.0).amax(1)
    return go_right, go_left, torch.maximum(dual, (-nu).clamp_min(0.0)), nu


def step(ipm: InteriorPoint, S: IPMState, A: ActiveSet, w_cur: torch.Tensor, greedy: bool):
    """One step of a primal active-set method (per element, batched).

    Move from w_cur (on the face of A) towards the face minimiser w_pol; if a free weight hits
    the end of its linear piece first, stop there and fix it (the objective only decreases, so
    this cannot cycle).  If w_pol is reached, free the fixed weight whose subgradient
    condition fails most.  Leverage: the row is dropped when its multiplier is negative and added when
    sum |w| > leverage.

    Returns the new (A, w_cur, w_pol), whether the element is done (B,) and its KKT violations.
    """
    p, st, lay = ipm.p, ipm.st, ipm.lay
    w_pol, y = polish(ipm, S, A)
    lower, upper = _segment(ipm, A)
    delta = w_pol - w_cur  # (B, n)
    out = A.free & ((w_pol < lower - PRIMAL_TOL) | (w_pol > upper + PRIMAL_TOL))
    room = torch.where(delta < 0, lower - w_cur, upper - w_cur) / torch.where(delta == 0, 1.0, delta)
    ratio = torch.where(out, room.clamp_min(0.0), torch.inf)  # (B, n)
    alpha = ratio.amin(1).clamp_max(1.0)  # (B,)
    blocked = alpha < 1.0
    # Greedy: fix every weight that leaves its piece; they sit at their breakpoint up to the
    # interior point's accuracy, so one step replaces one step per weight.
    reach = (torch.ones_like(alpha) if greedy else alpha).unsqueeze(1) * (1 + 1e-12)
    hit = out & (ratio <= reach) & blocked.unsqueeze(1)
    w_cur = torch.where(blocked.unsqueeze(1), w_cur + alpha.unsqueeze(1) * delta, w_pol)
    value = torch.where(hit, torch.where(delta < 0, lower, upper), A.value)
    w_cur = torch.where(hit, value, w_cur)

    go_right, go_left, dual, nu = _dual_moves(ipm, A, w_pol, y, blocked)
    primal = torch.where(A.free, torch.maximum(lower - w_pol, w_pol - upper).clamp_min(0.0), 0.0).amax(1)
    primal = torch.maximum(primal, (w_pol.sum(1) - 1.0).abs())  # (unmet when no weight is free)
    lev_on, lev_off = torch.zeros_like(A.lev), A.lev & (nu < -DUAL_TOL) & ~blocked
    if lay.ls:
        gross = w_pol.abs().sum(1) - st.leverage
        primal = torch.maximum(primal, gross.clamp_min(0.0))
        lev_on = ~A.lev & (gross > PRIMAL_TOL) & ~blocked

    slope, sign = _free_towards(ipm, A, go_right, go_left)
    free = (A.free & ~hit) | go_right | go_left
    value = torch.where(free, 0.0, value)
    hard = held_by_bound(value, st.long_only, st.max_weight)
    at_prev = ~free & lay.tc & (value == p.w_prev) & ~hard
    slope = torch.where(free, slope, 0.0)
    sign = torch.where(free, sign, torch.sign(value))
    sign = torch.where(lev_on.unsqueeze(1) & free, _side(w_cur, True), sign)
    lev = (A.lev | lev_on) & ~lev_off
    # (a face whose budget and leverage rows coincide on its free set can leave one of them
    # unmet: not an optimum, whatever the subgradients say)
    done = ~blocked & ~(go_right | go_left).any(1) & ~lev_on & ~lev_off & (primal <= FACE_TOL)
    return ActiveSet(free, value, at_prev, slope, sign, lev), w_cur, w_pol, done, primal, dual


def solve_exact(ipm: InteriorPoint, S: IPMState):
    """Polish a converged interior point to the exact optimum and certify it (KKT).

    Returns w (B, n) and its certified active set; raises SolverError naming the element if the
    active set cannot be settled in MAX_PASSES steps.  Certified elements leave the batch, so
    the later steps (usually a handful of elements) are cheap.
    """
    A = classify(ipm, S)
    lower, upper = _segment(ipm, A)
    w_cur = torch.where(A.free, torch.minimum(torch.maximum(S.x[..., 0], lower), upper), A.value)
    w_out, A_out = torch.empty_like(w_cur), clone(A)
    idx = torch.arange(w_cur.shape[0], device=w_cur.device)  # positions of the live elements
    cur, S_cur = ipm, S
    for k in range(MAX_PASSES):
        A_next, w_cur, w_pol, done, primal, dual = step(cur, S_cur, A, w_cur, k < GREEDY_PASSES)
        if bool(done.any()):
            w_out[idx[done]] = w_pol[done]
            put(A_out, idx[done], A, done)
            if bool(done.all()):
                return w_out, A_out
        live = ~done
        idx, A, w_cur, S_cur = idx[live], take(A_next, live), w_cur[live], take(S_cur, live)
        cur = ipm.subset(idx)
    raise SolverError(
        f"torch portfolio solver: batch element {int(cur.offset[0])} (of {len(idx)}): the active set"
        f" did not settle in {MAX_PASSES} steps after the interior point (KKT violation: primal"
        f" {float(primal[live][0]):.1e}, dual {float(dual[live][0]):.1e}; nearly degenerate problem)."
        " Use portfolio.solver = cvxpylayers for this data, or report it with the inputs."
    )
