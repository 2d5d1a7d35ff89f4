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
