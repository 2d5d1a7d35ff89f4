"""Slow, obviously-correct references the tests compare the fast paths with (not used by the code)."""

from __future__ import annotations

import numpy as np
import torch


def window_numpy(source, t: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One decision ``t`` of a ``data.WindowSource``, the slow way: (L, N, F) float32 features,
    (h, N) float64 daily returns, (N,) float64 compounded horizon return."""
    if not source.first_decision <= t <= source.last_decision:
        raise IndexError(f"decision index {t} outside [{source.first_decision}, {source.last_decision}].")
    days = range(t - source.lookback + 1, t + 1)
    x = np.stack([source.normalizer.transform(source.panel.features[d]) for d in days])  # (L, N, F)
    r_daily = np.array(source.panel.returns[t + 1: t + source.horizon + 1])  # (h, N)
    return x, r_daily, np.prod(1 + r_daily, axis=0) - 1


def split_tensor(splits, name: str, device="cpu") -> torch.Tensor:
    """One split of a ``data.Splits`` as a writable LongTensor (n,) (the split arrays are read-only)."""
    return torch.tensor(getattr(splits, name), dtype=torch.long, device=device)


def dense_covariance(cov_factor: torch.Tensor, cov_diag: torch.Tensor) -> torch.Tensor:
    """Sigma = B B^T + diag(d), (B, N, N), from the factor form (B, N, k) and (B, N)."""
    return cov_factor @ cov_factor.transpose(-1, -2) + torch.diag_embed(cov_diag)  # (B, N, N)


def cvxpy_baseline_weights(returns: np.ndarray, indices: np.ndarray, horizon: int, pf, use_mean: bool,
                           estimation_days: int = 252, shrinkage: float = 0.2) -> np.ndarray:
    """The hand-written baselines skfolio replaced (min variance, or sample mean-variance with
    use_mean): trailing sample moments, covariance shrunk towards its diagonal, horizon-scaled,
    solved directly by cvxpy + Clarabel under the training constraints without the cost term."""
    import dataclasses

    from portfolio.cvx import solve_reference

    classic = dataclasses.replace(pf, tc_rate=0.0)
    n = returns.shape[1]
    prev, rows = np.full(n, 1.0 / n), []
    for t in indices:
        window = returns[int(t) - estimation_days + 1: int(t) + 1]  # (E, N), dates <= t only
        centred = window - window.mean(axis=0)
        factor = np.sqrt((1 - shrinkage) / (len(window) - 1) * horizon) * centred.T  # (N, E)
        diag = shrinkage * centred.var(axis=0, ddof=1) * horizon  # (N,)
        mu = window.mean(axis=0) * horizon if use_mean else np.zeros(n)
        prev = solve_reference(mu, factor, diag, prev, classic, tol=1e-8)
        rows.append(prev)
    return np.vstack(rows)
