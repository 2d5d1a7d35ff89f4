"""The torch backend's problem data: settings, the scaled problem, batch-indexing helpers.

Per batch element the objective is divided by its largest coefficient (:func:`scale_problem`)
so that the solver's absolute tolerances mean the same for every element::

    minimise   0.5 ||F^T w||^2 + 0.5 sum d_i w_i^2 - mu^T w + sum_i phi_i(w_i)   s.t.  1^T w = 1
    phi_i(w)   = c |w - w_prev_i| + [0 <= w <= max_weight]                 (long_only)
               = c |w - w_prev_i| + nu |w|  with nu >= 0 for sum |w| <= L  (long_short)

Data whose scaled form leaves the weights to rounding (a risk term negligible next to mu, an
idiosyncratic variance negligible next to the largest variance, a variance that overflows) are
refused here, before any stage runs (:func:`check_conditioning`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch

from core.errors import SolverError

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


MIN_CURVATURE = 1e-4
"""Refused below: the largest 2 gamma variance over max(|mu|, tc_rate).  The solver's tolerances
are absolute on the scaled problem; with a risk term ~1e-6 of mu the weights left free by the
bounds were off by 1e-4 (1e-2 - 0.2 at 1e-12 and beyond, silently for long_only)."""
MIN_IDIOSYNCRATIC = 1e-10
"""Refused below: the smallest 2 gamma cov_diag over the largest objective coefficient (the
covariance is numerically singular: long_only weights were off by 1e-6 at 1e-11, by 1e-2 at 1e-14)."""


def check_conditioning(p: Scaled, mu, cov_factor, cov_diag, st: QPSettings) -> None:
    """Refuse data whose scaled problem leaves the weights to rounding, naming the element.

    mu (B, n), cov_factor (B, n, k), cov_diag (B, n): the unscaled inputs (for the message).
    """
    curvature = (p.d + p.fvar).amax(1)  # (B,) the largest 2 gamma variance, scaled
    bad = ~torch.isfinite(p.scale[:, 0]) | (curvature < MIN_CURVATURE) | (p.d.amin(1) < MIN_IDIOSYNCRATIC)
    if not bool(bad.any()):
        return
    i = int(bad.nonzero()[0, 0])
    where = f"torch portfolio solver: batch element {i} (of {int(bad.sum())} refused)"
    var = cov_diag[i] + cov_factor[i].square().sum(1)  # (n,) diag of Sigma
    if not bool(torch.isfinite(p.scale[i])):
        raise SolverError(
            f"{where}: the covariance overflows float64 (largest |cov_factor| entry"
            f" {float(cov_factor[i].abs().max()):.3e}, largest cov_diag {float(cov_diag[i].max()):.3e}):"
            " the inputs are not on the scale of returns. Rescale the model's covariance outputs."
        )
    if float(curvature[i]) < MIN_CURVATURE:
        raise SolverError(
            f"{where}: the risk term is negligible: the largest variance {float(var.max()):.3e} (times"
            f" 2 gamma = {2 * st.risk_aversion:g}) is {float(curvature[i]):.1e} of max(|mu|, tc_rate) ="
            f" {float(p.scale[i]):.3e} (needs >= {MIN_CURVATURE:g}); the weights would be decided by rounding."
            " mu and the covariance must be on the same (per-horizon return) scale: check the mu head's"
            " output (a diverging model?) and the units of the inputs."
        )
    j = int(p.d[i].argmin())
    raise SolverError(
        f"{where}: the covariance is ill-conditioned (numerically singular): cov_diag[{j}] ="
        f" {float(cov_diag[i, j]):.3e} (times 2 gamma) is {float(p.d[i, j]):.1e} of the problem's scale"
        f" {float(p.scale[i]):.3e} (largest 2 gamma variance or |mu|; needs >= {MIN_IDIOSYNCRATIC:g});"
        " the weights would be decided by rounding, not by the data. Keep the idiosyncratic variances"
        " above ~1e-9 of the largest variance (model.heads.min_variance) or rescale the inputs."
    )


def cholesky_checked(M: torch.Tensor, what: str, offset: torch.Tensor | None = None) -> torch.Tensor:
    """Cholesky factor of the (B, k, k) matrices M; SolverError naming the element if one is not
    positive definite in float64 (offset: the elements' positions in the caller's batch)."""
    chol, info = torch.linalg.cholesky_ex(M)
    if bool((info != 0).any()):
        i = int((info != 0).nonzero()[0, 0])
        pos = i if offset is None else int(offset[i])
        raise SolverError(
            f"torch portfolio solver: batch element {pos}: {what} is not positive definite in float64"
            " (its Cholesky factorisation failed): the covariance inputs are too badly scaled (entries"
            " of cov_factor and cov_diag many orders of magnitude apart). Rescale the inputs or keep"
            " cov_diag >= model.heads.min_variance; portfolio.solver = cvxpylayers is the reference."
        )
    return chol


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
