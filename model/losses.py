"""Training losses of the end-to-end model, computed in float64.

All inputs are horizon simple returns in decimal units (0.01 = 1 %) over days t+1..t+horizon of a
decision at t; see docs/model.md for the derivations.  With B the batch and N the factors:

* ``loss_return`` = mean over (b, i) of (100 * (mu[b,i] - r[b,i]))**2: MSE in percent**2.
  With ``training.return_loss: cross_section``, of (100 * (e[b,i] - mean_j e[b,j]))**2 with
  e = mu - r: the date's common move is left out.  With ``training.return_loss: huber``, the
  squared percent error is replaced beyond :data:`HUBER_DELTA` by its tangent line,
  2 * delta * |e| - delta**2 (twice torch's ``huber_loss``), so no (date, factor) pulls mu with a
  gradient above 2 * delta.  With ``training.return_loss: rank_ic``, it is 1 - the mean over b of
  the Pearson correlation, across the factors, of mu[b] with the ranks of r[b]: a differentiable
  information coefficient, blind to mu's scale and to the date's common move, and to how large a
  return is beyond its rank; ``training.rank_ic_anchor`` a > 0 adds a times the raw MSE, which
  anchors mu's scale.
  A 5-day factor return has a vol of ~1.4 %, so predicting 0 scores ~2.
* ``loss_cov`` = mean over b of  NLL_b / N,  with NLL_b the Gaussian negative log-likelihood of
  100 * r[b] under N(100 * mu[b], 1e4 * Sigma[b]) (percent units),
  Sigma = B B^T + diag(d):  0.5 * (e^T Sigma^-1 e + log det Sigma + N log 2 pi).
  Computed with Woodbury and the matrix determinant lemma (a k x k Cholesky per sample).
  Per asset and in percent units it is O(1) (~1.8 for a well-calibrated 1.4 % vol).
* ``loss_sharpe`` = - mean(p) / sqrt(var(p) + eps) * sqrt(252 / horizon), with p[b] = w[b]^T r[b]
  the realised portfolio returns of the batch, var the sample variance (ddof = 1) and
  eps = :data:`SHARPE_VARIANCE_EPS` (keeps the gradient finite when the batch returns coincide).
  Annualised so that it is O(1); raw returns, no risk-free rate.
* ``loss_tc`` = tc_rate * mean over b of ||w[b] - w_prev[b]||_1: the transaction cost of the
  rebalance as a fraction of portfolio value (return units; ~1e-4 for a 5 bp rate and turnover 0.2,
  so lambda_tc must be large, ~1e2-1e3, to matter next to the O(1) terms).
* ``loss`` = alpha_return * loss_return + beta_cov * loss_cov + gamma_sharpe * loss_sharpe
  + lambda_tc * loss_tc.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from core.config import TrainingConfig
from core.constants import TRADING_DAYS_PER_YEAR
from core.errors import ShapeError
from model.heads import check_shape

PERCENT = 100.0
"""Returns are scaled to percent inside loss_return and loss_cov so that both are O(1)."""
TERM_KEYS = ("loss_return", "loss_cov", "loss_sharpe", "loss_tc")
RANK_IC_EPS = 1e-16
"""Added to mu's cross-sectional sum of squares (decimal units**2) under ``return_loss: rank_ic``,
so that the correlation's gradient is finite when mu is the same for every factor of a date."""
HUBER_DELTA = 2.0
"""Where ``return_loss: huber`` turns from quadratic to linear, in percent (about 1.4 standard
deviations of a 5-day factor return of ~1.4 % vol; the synthetic panel's daily shocks are Student-t
with 5 degrees of freedom under GARCH, docs/data.md)."""
SHARPE_VARIANCE_EPS = 1e-8
"""Added to the batch variance of portfolio returns (return units**2, i.e. a 1e-4 std floor)."""


def term_weights(train_cfg: TrainingConfig) -> dict[str, float]:
    """The configured weight of each loss term, keyed like the terms (``TERM_KEYS``)."""
    return {"loss_return": train_cfg.alpha_return, "loss_cov": train_cfg.beta_cov,
            "loss_sharpe": train_cfg.gamma_sharpe, "loss_tc": train_cfg.lambda_tc}


def return_mse(mu: torch.Tensor, r_horizon: torch.Tensor, kind: str = "raw", anchor: float = 0.0) -> torch.Tensor:
    """Squared error of predicted vs realised horizon returns in percent**2, averaged; (B, N) -> ().

    ``kind`` is ``training.return_loss``: raw, the MSE; cross_section, the error less its mean over
    the factors of each date, i.e. the MSE of the demeaned mu against the demeaned returns; huber,
    the square replaced beyond :data:`HUBER_DELTA` percent by its tangent line (equal to the MSE
    where every error is within it); rank_ic, 1 - the mean over dates of the correlation of mu with
    the ranks of the realised returns (:func:`rank_ic_loss`; not a squared error, the name is kept),
    plus ``anchor`` times the raw MSE where ``anchor`` (``training.rank_ic_anchor``) is not 0."""
    if kind == "rank_ic":
        rank = rank_ic_loss(mu, r_horizon)
        return rank if anchor == 0 else rank + anchor * return_mse(mu, r_horizon, "raw")
    err = mu - r_horizon  # (B, N)
    if kind == "cross_section":
        err = err - err.mean(dim=-1, keepdim=True)
    pct = PERCENT * err
    if kind == "huber":
        return 2.0 * torch.nn.functional.huber_loss(pct, torch.zeros_like(pct), delta=HUBER_DELTA)
    return pct.square().mean()


def rank_ic_loss(mu: torch.Tensor, r_horizon: torch.Tensor) -> torch.Tensor:
    """1 - mean over dates of corr(mu[b], rank(r[b])) across the factors; (B, N) -> () in [0, 2].

    The ranks (0 .. N-1, ties broken by order) are constants; mu keeps its gradient.  The loss is
    unchanged when a date's mu is scaled by a positive number or shifted, so mu's scale and level
    are left to the other terms (the NLL's Mahalanobis term, the decision)."""
    ranks = r_horizon.detach().argsort(dim=-1).argsort(dim=-1).to(mu.dtype)
    z = ranks - ranks.mean(dim=-1, keepdim=True)
    z = z / z.square().sum(dim=-1, keepdim=True).sqrt()
    m = mu - mu.mean(dim=-1, keepdim=True)
    m = m / (m.square().sum(dim=-1, keepdim=True) + RANK_IC_EPS).sqrt()
    return 1.0 - (m * z).sum(dim=-1).mean()


def gaussian_nll(
    mu: torch.Tensor, cov_factor: torch.Tensor, cov_diag: torch.Tensor, r_horizon: torch.Tensor
) -> torch.Tensor:
    """Per-asset Gaussian NLL of realised returns under N(mu, B B^T + diag(d)), percent units.

    Parameters
    ----------
    mu, r_horizon : Tensor, shape (B, N)
    cov_factor : Tensor, shape (B, N, k)
    cov_diag : Tensor, shape (B, N), > 0

    Returns
    -------
    Tensor, shape ()
        mean over b of 0.5 * (e^T Sigma^-1 e + log det Sigma + N log 2 pi) / N, e = r - mu, all in
        percent units (Sigma scaled by 1e4).
    """
    n_assets, rank = cov_factor.shape[-2], cov_factor.shape[-1]
    err = PERCENT * (r_horizon - mu)  # (B, N)
    loadings = PERCENT * cov_factor  # (B, N, k)
    diag = PERCENT**2 * cov_diag  # (B, N)
    err_over_d = err / diag  # (B, N): D^-1 e
    scaled = loadings / diag.unsqueeze(-1)  # (B, N, k): D^-1 B
    eye = torch.eye(rank, dtype=err.dtype, device=err.device)
    capacitance = eye + loadings.transpose(-1, -2) @ scaled  # (B, k, k): I + B^T D^-1 B
    chol = torch.linalg.cholesky(capacitance)  # (B, k, k), lower
    proj = (loadings.transpose(-1, -2) @ err_over_d.unsqueeze(-1))  # (B, k, 1): B^T D^-1 e
    z = torch.linalg.solve_triangular(chol, proj, upper=False)  # (B, k, 1)
    # Woodbury: e^T Sigma^-1 e = e^T D^-1 e - (B^T D^-1 e)^T C^-1 (B^T D^-1 e), C = L L^T.
    mahalanobis = (err * err_over_d).sum(-1) - z.square().sum((-2, -1))  # (B,)
    # Determinant lemma: log det Sigma = log det D + log det C.
    logdet = diag.log().sum(-1) + 2.0 * torch.diagonal(chol, dim1=-2, dim2=-1).log().sum(-1)  # (B,)
    nll = 0.5 * (mahalanobis + logdet + n_assets * math.log(2.0 * math.pi))  # (B,)
    return (nll / n_assets).mean()


def batch_sharpe(weights: torch.Tensor, r_horizon: torch.Tensor, horizon: int) -> torch.Tensor:
    """Annualised Sharpe ratio of the realised portfolio returns across the batch; (B, N) -> ().

    p[b] = w[b]^T r[b];  mean(p) / sqrt(var(p, ddof=1) + eps) * sqrt(252 / horizon).
    """
    returns = (weights * r_horizon).sum(-1)  # (B,)
    periods_per_year = TRADING_DAYS_PER_YEAR / horizon
    std = torch.sqrt(returns.var(correction=1) + SHARPE_VARIANCE_EPS)
    return returns.mean() / std * math.sqrt(periods_per_year)


def turnover(weights: torch.Tensor, w_prev: torch.Tensor) -> torch.Tensor:
    """Mean one-norm of the rebalance ||w - w_prev||_1 over the batch; (B, N) -> ()."""
    return (weights - w_prev).abs().sum(-1).mean()


def _check_inputs(mu, cov_factor, cov_diag, weights, w_prev, r_horizon, r_daily, horizon) -> None:
    check_shape("mu", mu, (None, None))
    batch, n_assets = mu.shape
    if batch < 2:
        raise ShapeError(
            f"the batch Sharpe needs >= 2 samples, got a batch of {batch}; use training.batch_size >= 2 "
            "and drop a last batch of a single window (drop_last)."
        )
    check_shape("cov_factor", cov_factor, (batch, n_assets, None))
    for name, tensor in (("cov_diag", cov_diag), ("weights", weights), ("w_prev", w_prev), ("r_horizon", r_horizon)):
        check_shape(name, tensor, (batch, n_assets))
    if r_daily is not None:
        check_shape("r_daily", r_daily, (batch, horizon, n_assets), hint="(batch, horizon, factors)")
    if horizon < 1:
        raise ShapeError(f"horizon must be >= 1 day (got {horizon}).")


def compute_losses(
    mu: torch.Tensor,
    cov_factor: torch.Tensor,
    cov_diag: torch.Tensor,
    weights: torch.Tensor,
    w_prev: torch.Tensor,
    r_horizon: torch.Tensor,
    r_daily: Optional[torch.Tensor],
    train_cfg: TrainingConfig,
    tc_rate: float,
    horizon: int,
    scales: Optional[dict[str, float]] = None,
    r_target: Optional[torch.Tensor] = None,
) -> dict[str, torch.Tensor]:
    """All loss terms and their weighted total (definitions in the module docstring).

    Parameters
    ----------
    mu : Tensor, shape (B, N)
        Predicted expected horizon returns.
    cov_factor : Tensor, shape (B, N, k)
    cov_diag : Tensor, shape (B, N)
        Predicted covariance Sigma = B B^T + diag(d) of horizon returns.
    weights : Tensor, shape (B, N)
        Portfolio weights chosen at t (float64 from the portfolio layer).
    w_prev : Tensor, shape (B, N)
        Weights held before the rebalance.
    r_horizon : Tensor, shape (B, N)
        Realised simple returns over t+1..t+horizon.
    r_daily : Tensor, shape (B, horizon, N), or None
        Realised daily returns over the horizon; only shape-checked (no term uses it yet).
    train_cfg : TrainingConfig
        alpha_return, beta_cov, gamma_sharpe, lambda_tc.
    tc_rate : float
        Proportional cost per unit of one-way turnover (portfolio.tc_rate).
    horizon : int
        Days in the horizon (annualises the Sharpe ratio).
    scales : dict, optional
        Fixed multipliers of the terms inside the total (``loss_return``, ``loss_cov``,
        ``loss_sharpe``, ``loss_tc``; missing = 1), e.g. from :func:`gradient_scales`.  The
        returned terms themselves are unscaled, so they stay comparable across runs.
    r_target : Tensor, shape (B, N), optional
        What ``loss_return`` and ``loss_sharpe`` score instead of ``r_horizon`` (training with
        ``training.target_days``: a longer span's mean return in horizon units); ``loss_cov`` always
        scores ``r_horizon``.  None = ``r_horizon``.

    Returns
    -------
    dict of 0-dim float64 tensors: ``loss``, ``loss_return``, ``loss_cov``, ``loss_sharpe``,
    ``loss_tc``.

    Raises
    ------
    ShapeError
        A shape mismatch, or B < 2 (the batch Sharpe needs two samples).
    """
    _check_inputs(mu, cov_factor, cov_diag, weights, w_prev, r_horizon, r_daily, horizon)
    f64 = torch.float64  # weights arrive in float64; the heads' float32 outputs are upcast
    mu, cov_factor, cov_diag = mu.to(f64), cov_factor.to(f64), cov_diag.to(f64)
    weights, w_prev, r_horizon = weights.to(f64), w_prev.to(f64), r_horizon.to(f64)
    if r_target is None:
        r_target = r_horizon
    else:
        check_shape("r_target", r_target, tuple(r_horizon.shape), hint="(batch, factors), like r_horizon")
        r_target = r_target.to(f64)
    terms = {
        "loss_return": return_mse(mu, r_target, train_cfg.return_loss, train_cfg.rank_ic_anchor),
        "loss_cov": gaussian_nll(mu.detach() if train_cfg.cov_loss_mean == "detached" else mu,
                                 cov_factor, cov_diag, r_horizon),
        "loss_sharpe": -batch_sharpe(weights, r_target, horizon),
        "loss_tc": tc_rate * turnover(weights, w_prev),
    }
    scales = scales or {}
    total = sum(w * float(scales.get(k, 1.0)) * terms[k] for k, w in term_weights(train_cfg).items())
    return {"loss": total, **terms}
