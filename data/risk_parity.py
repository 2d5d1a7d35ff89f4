"""Equal risk contribution (ERC, batched float64 torch) and hierarchical risk parity (HRP, numpy / scipy) weights.

Fast paths of two skfolio baselines (:mod:`data.baselines`), each held to skfolio's estimator
by the tests (``tests/data/test_data_baselines.py``):

* :func:`erc_weights`: skfolio's ``RiskBudgeting`` (variance, equal budgets) minimises ``w' S w``
  subject to ``sum log w >= 0`` and its weight bounds, then rescales to ``sum w = 1``.  Without
  bounds its solution is the unique ERC portfolio, ``w_i (S w)_i`` equal for all i, which is
  ``y / sum(y)`` for the minimiser ``y > 0`` of the strictly convex
  ``0.5 y' S y - sum_i log y_i`` (its stationarity condition is ``y_i (S y)_i = 1``).  That is
  solved here by damped Newton for all dates at once.  Where the ERC portfolio breaks a weight
  bound, skfolio's answer is another point, and the caller must solve it with skfolio
  (:func:`data.baselines.baseline_weights` does).
* :func:`hrp_weights`: skfolio's ``HierarchicalRiskParity`` with its defaults (Pearson distance
  ``sqrt(0.5 (1 - corr))``, Ward linkage, optimal leaf ordering, recursive bisection with the
  variance of inverse-variance cluster portfolios, weight bounds applied to each split factor
  as skfolio's ``_apply_weight_constraints_to_split_factor`` does), written out without the
  estimator machinery.  skfolio's clustering also chooses a number of clusters (``cut_tree``,
  ~40 % of its fit), which HRP's weights never use; it is not computed here.
"""

from __future__ import annotations

import functools

import numpy as np
import scipy.cluster.hierarchy as sch
import scipy.spatial.distance as scd
import torch

from core.errors import SolverError
from portfolio.torch_solver import single_thread

NEWTON_MAX_ITER = 100
NEWTON_TOL = 1e-22  # on the squared Newton decrement lambda^2 ~ 2 (f - f*); one more full step follows
FULL_STEP = 1e-2  # lambda^2 below which Newton's full step is taken (lambda = 0.1, quadratic region)
BOUNDS_TOL = 1e-8  # skfolio's _WEIGHT_BOUNDS_TOL for HRP's final bound check


def erc_weights(cov: torch.Tensor) -> torch.Tensor:
    """(K, N) equal-risk-contribution weights (long-only, no other bound) for covariances (K, N, N).

    Solves ``min_z 0.5 z' C z - sum log z`` with C the correlation matrix (the problem in
    ``y = z / sd`` differs by a constant), all K at once in float64 torch on one thread (numpy's
    threaded BLAS stalled ~600x on batched solves on this loaded 2-core machine): Newton's
    direction, a backtracking line search that keeps ``z > 0`` while far from the optimum,
    full steps near it, stopping on the Newton decrement.  Raises SolverError naming the
    element(s) if a covariance has a non-positive variance or Newton does not converge.
    """
    cov = torch.as_tensor(cov, dtype=torch.float64)
    n = cov.shape[1]
    var = torch.diagonal(cov, dim1=1, dim2=2)  # (K, N)
    if not bool((var > 0).all()):
        bad = (~(var > 0).all(1)).nonzero()[:5, 0].tolist()
        raise SolverError(f"ERC: covariance(s) {bad} have a non-positive or NaN variance; ERC needs positive variances.")
    with single_thread():
        sd = var.sqrt()
        corr = cov / sd[:, :, None] / sd[:, None, :]  # (K, N, N)
        z = (n / corr.sum((1, 2))).sqrt()[:, None].repeat(1, n)  # (K, N): z' C z = n, as at the optimum
        active = torch.ones(len(z), dtype=torch.bool)
        for _ in range(NEWTON_MAX_ITER):
            idx = active.nonzero()[:, 0]
            c, za = corr[idx], z[idx]
            grad = (c @ za[:, :, None])[:, :, 0] - 1 / za  # (A, N)
            hess = c + torch.diag_embed(1 / za**2)  # (A, N, N), positive definite for z > 0
            chol, info = torch.linalg.cholesky_ex(hess)
            if bool((info > 0).any()):
                bad = idx[info > 0][:5].tolist()
                raise SolverError(f"ERC: the Newton system of covariance(s) {bad} is not positive definite"
                                  " (a NaN or a singular covariance); check those windows.")
            step = -torch.cholesky_solve(grad[:, :, None], chol)[:, :, 0]  # (A, N)
            decrement = -(grad * step).sum(1)  # (A,) squared Newton decrement
            z[idx] = za + _line_search(c, za, step, decrement)[:, None] * step
            active[idx[decrement <= NEWTON_TOL]] = False  # after this last full step
            if not bool(active.any()):
                y = z / sd
                return y / y.sum(1, keepdim=True)
    raise SolverError(
        f"ERC: Newton did not converge in {NEWTON_MAX_ITER} steps for covariance(s) {active.nonzero()[:5, 0].tolist()};"
        " check those windows for a near-singular covariance."
    )


def _objective(c: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """0.5 z' C z - sum log z, (A,); +inf where some z <= 0."""
    value = 0.5 * (z[:, None, :] @ c @ z[:, :, None])[:, 0, 0] - z.clamp_min(1e-300).log().sum(1)
    return torch.where((z > 0).all(1), value, torch.inf)


def _line_search(c: torch.Tensor, z: torch.Tensor, step: torch.Tensor, decrement: torch.Tensor) -> torch.Tensor:
    """(A,) step sizes: 1, or halved until z stays positive and the Armijo condition holds.

    f is self-concordant (a quadratic plus a log barrier): with a squared Newton decrement below
    ``FULL_STEP`` the full step stays in the domain and converges quadratically, so it is taken
    as is (an Armijo test there would only compare the round-off of f ~ n with a smaller
    decrement).
    """
    alpha = torch.ones(len(z), dtype=z.dtype)
    todo = decrement > FULL_STEP
    if not bool(todo.any()):
        return alpha
    f0 = _objective(c, z)
    for _ in range(60):
        idx = todo.nonzero()[:, 0]
        f = _objective(c[idx], z[idx] + alpha[idx, None] * step[idx])
        ok = f <= f0[idx] - 0.25 * alpha[idx] * decrement[idx]
        todo[idx[ok]] = False
        if not bool(todo.any()):
            return alpha
        alpha[todo] *= 0.5
    raise SolverError(f"ERC: the line search failed for element(s) {todo.nonzero()[:5, 0].tolist()}"
                      " (a near-singular covariance?).")


def hrp_weights(cov: np.ndarray, min_weights: float, max_weights: float) -> np.ndarray:
    """(N,) HRP weights of one window, as skfolio's ``HierarchicalRiskParity`` (variance, defaults).

    Parameters
    ----------
    cov : (N, N) sample covariance of the window (ddof 1; skfolio's ``EmpiricalPrior`` and,
        scaled to a correlation, its ``PearsonDistance``)
    min_weights, max_weights : the bounds of every weight (``0 <= min <= max <= 1``)
    """
    cov = np.asarray(cov, dtype=np.float64)
    n = cov.shape[0]
    risks = np.diag(cov).copy()  # variance of a portfolio all in asset i
    if not np.isfinite(cov).all() or np.any(risks <= 0):
        raise SolverError("HRP: an asset has zero or non-finite variance; HRP cannot split it.")
    order = seriation(cov)
    # clusters are contiguous runs of the seriated order; one tree level at a time, vectorised
    cov_o, inv_risk = cov[np.ix_(order, order)], 1 / risks[order]
    quad = inv_risk[:, None] * cov_o * inv_risk[None, :]  # (N, N): block sums are iv' Sigma iv
    weights_o = np.ones(n)
    start, stop = np.array([0]), np.array([n])
    while len(start):  # breadth first, as skfolio: every split of a level sees its parent's weight
        mid = start + (stop - start) // 2
        cuts = np.unique(np.concatenate([[0], start, mid, stop[stop < n]]))  # a partition of 0..n-1
        block_var = np.diag(np.add.reduceat(np.add.reduceat(quad, cuts, 0), cuts, 1))
        block_var = block_var / np.add.reduceat(inv_risk, cuts) ** 2  # w' Sigma w, w = iv / sum(iv)
        left_risk, right_risk = block_var[np.searchsorted(cuts, start)], block_var[np.searchsorted(cuts, mid)]
        alpha = 1 - left_risk / (left_risk + right_risk)
        # skfolio's _apply_weight_constraints_to_split_factor, term for term
        parent = weights_o[start]
        lo_left, up_left = _bound_sums(min_weights, mid - start), _bound_sums(max_weights, mid - start)
        lo_right, up_right = _bound_sums(min_weights, stop - mid), _bound_sums(max_weights, stop - mid)
        alpha = np.minimum(up_left / parent, np.maximum(lo_left / parent, alpha))
        alpha = 1 - np.minimum(up_right / parent, np.maximum(lo_right / parent, 1 - alpha))
        factor = np.ones(len(cuts))
        factor[np.searchsorted(cuts, start)], factor[np.searchsorted(cuts, mid)] = alpha, 1 - alpha
        weights_o *= np.repeat(factor, np.diff(np.append(cuts, n)))
        start, stop = np.concatenate([start, mid]), np.concatenate([mid, stop])
        keep = stop - start >= 2
        start, stop = start[keep], stop[keep]
    weights = np.empty(n)
    weights[order] = weights_o
    lower, upper = np.full(n, float(min_weights)), np.full(n, float(max_weights))
    if not np.isclose(weights.sum(), 1) or np.any(weights < lower - BOUNDS_TOL) or np.any(weights > upper + BOUNDS_TOL):
        raise SolverError(f"HRP: the bisection could not meet the weight bounds [{min_weights}, {max_weights}]"
                          f" (weights from {weights.min():.3g} to {weights.max():.3g}, sum {weights.sum():.6f});"
                          " loosen portfolio.max_weight.")
    return weights


def _bound_sums(bound: float, sizes: np.ndarray) -> np.ndarray:
    """(S,) the sums of the clusters' bounds as skfolio takes them (numpy's sum of ``size`` copies)."""
    return np.array([_bound_sum(float(bound), int(k)) for k in sizes])


@functools.lru_cache(maxsize=4096)
def _bound_sum(bound: float, size: int) -> float:
    return float(np.full(size, bound).sum())


def seriation(cov: np.ndarray) -> np.ndarray:
    """(N,) asset order of skfolio's default ``HierarchicalSeriation`` on ``PearsonDistance``:
    Ward linkage of ``sqrt(clip(0.5 (1 - corr), 0, 1))``, optimal leaf ordering, its leaves."""
    sd = np.sqrt(np.diag(cov))
    corr = cov / sd[:, None] / sd[None, :]  # as np.corrcoef, which skfolio's PearsonDistance calls
    np.clip(corr, -1, 1, out=corr)
    distance = np.sqrt(np.clip(0.5 * (1 - corr), a_min=0.0, a_max=1.0))
    distance = np.maximum(distance / 2 + distance.T / 2, 0)  # skfolio's BaseSeriation._validate_distance
    np.fill_diagonal(distance, 0)
    condensed = scd.squareform(distance, checks=False)
    linkage = sch.linkage(condensed, method="ward", optimal_ordering=False)
    return sch.leaves_list(sch.optimal_leaf_ordering(linkage, condensed))
