"""Moment heads: expected horizon returns and a factor-model covariance from the encoder summary.

Units: every output is in *horizon simple-return* units (decimal: 0.01 = 1 %) over the decision's
horizon, days t+1..t+horizon.  Raw linear outputs are multiplied by fixed scales derived from a
reference factor volatility of 10 % a year (:data:`REFERENCE_ANNUAL_VOL`), so that at
initialisation, for horizon = 5 days (vol_h = 0.10 * sqrt(5/252) = 1.4 %):

* ``mu`` has a standard deviation of about 0.1 * vol_h * 0.6 ~ 8e-4,
* ``diag(Sigma)`` is about vol_h**2 ~ 2e-4 (a third from the factors, the rest idiosyncratic).

The scales are constants, not parameters: the linear layers learn any other level, and fixed scales
keep the optimiser's step sizes comparable across horizons.

Also home of :class:`ShapeError` and :func:`check_shape`, the boundary checks of the model package
(kept here because this module has no heavy imports).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from core.constants import TRADING_DAYS_PER_YEAR
from core.errors import ConfigError, ShapeError

REFERENCE_ANNUAL_VOL = 0.10
"""Annual volatility of a typical factor portfolio; sets the output scales (not a constraint)."""


def check_shape(name: str, tensor: torch.Tensor, expected: Sequence[Optional[int]], hint: str = "") -> None:
    """Raise :class:`ShapeError` unless ``tensor.shape`` matches ``expected`` (None = any size).

    The message names the tensor, the expected and the actual shape, e.g.
    ``x: expected shape (B, 20, 104, 9), got (32, 20, 104, 8)``.
    """
    if not isinstance(tensor, torch.Tensor):
        raise ShapeError(f"{name}: expected a torch.Tensor, got {type(tensor).__name__}.")
    got = tuple(tensor.shape)
    ok = len(got) == len(expected) and all(e is None or e == g for e, g in zip(expected, got))
    if not ok:
        # Unconstrained sizes print as B (the leading batch) or * (anything else).
        names = ["B" if i == 0 else "*" for i in range(len(expected))]
        shown = ", ".join(n if e is None else str(e) for n, e in zip(names, expected))
        raise ShapeError(f"{name}: expected shape ({shown}), got {got}.{(' ' + hint) if hint else ''}")


def horizon_vol(horizon: int) -> float:
    """Reference volatility of a ``horizon``-day simple return (decimal), sqrt-of-time scaled."""
    if horizon < 1:
        raise ConfigError(f"data.prediction_horizon = {horizon} must be >= 1 day.")
    return REFERENCE_ANNUAL_VOL * math.sqrt(horizon / TRADING_DAYS_PER_YEAR)


class MomentHeads(nn.Module):
    """Map the encoder summary to (mu, cov_factor, cov_diag) with Sigma = B B^T + diag(d).

    Parameters
    ----------
    hidden_dim : int
        Width H of the encoder summary.
    n_assets : int
        Number N of factor portfolios.
    cov_rank : int
        Rank k of the factor part of the covariance.
    min_variance : float
        Floor added to the idiosyncratic variances d (horizon-return units, > 0): keeps Sigma
        positive definite whatever the weights.
    horizon : int
        Prediction horizon in days; sets the output scales (see module docstring).
    """

    shared_by_factors = False
    """False: one summary (B, H) gives all N factors' outputs (the panel layout)."""

    def __init__(self, hidden_dim: int, n_assets: int, cov_rank: int, min_variance: float, horizon: int):
        super().__init__()
        if min_variance <= 0:
            raise ConfigError(
                f"model.heads.min_variance = {min_variance} must be > 0 so Sigma is positive definite."
            )
        self.n_assets, self.cov_rank, self.min_variance = n_assets, cov_rank, float(min_variance)
        vol_h = horizon_vol(horizon)
        self.mu_scale = 0.1 * vol_h  # expected returns are a small fraction of the volatility
        self.factor_scale = vol_h / math.sqrt(cov_rank)  # k loadings share the factor variance
        self.variance_scale = vol_h**2
        outputs = 1 if self.shared_by_factors else n_assets  # per summary vector
        self.mu_head = nn.Linear(hidden_dim, outputs)
        self.factor_head = nn.Linear(hidden_dim, outputs * cov_rank)
        self.variance_head = nn.Linear(hidden_dim, outputs)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Moments of the next horizon's simple returns.

        Parameters
        ----------
        h : Tensor, shape (B, H)
            Encoder summary (any float dtype; computed in float32).

        Returns
        -------
        mu : Tensor, shape (B, N), float32
            Expected horizon returns.
        cov_factor : Tensor, shape (B, N, k), float32
            Loadings B of Sigma = B B^T + diag(d).
        cov_diag : Tensor, shape (B, N), float32
            Idiosyncratic variances d = variance_scale * softplus(.) + min_variance > 0.
        """
        check_shape("encoder summary h", h, (None, self.mu_head.in_features))
        batch = h.shape[0]
        # Outside autocast: under bf16 the heads' outputs (and so Sigma) must stay float32.
        with torch.autocast(device_type=h.device.type, enabled=False):
            h = h.float()  # (B, H)
            mu = self.mu_scale * self.mu_head(h)  # (B, N)
            cov_factor = self.factor_scale * self.factor_head(h)  # (B, N*k)
            cov_factor = cov_factor.view(batch, self.n_assets, self.cov_rank)  # (B, N, k)
            cov_diag = self.variance_scale * F.softplus(self.variance_head(h)) + self.min_variance  # (B, N)
        return mu, cov_factor, cov_diag


class FactorHeads(MomentHeads):
    """Per-factor moments from per-factor summaries, with one set of weights shared by all factors.

    Same outputs, units and scales as :class:`MomentHeads`; factor i's mean, loadings (its row of
    B) and idiosyncratic variance are read from its own summary h[:, i] alone, so the mapping is
    learnt once from every factor's data instead of once per factor.

    Parameters: as :class:`MomentHeads`.
    """

    shared_by_factors = True

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """h (B, N, H) -> mu (B, N), cov_factor (B, N, k), cov_diag (B, N), all float32."""
        check_shape("encoder summary h", h, (None, self.n_assets, self.mu_head.in_features))
        with torch.autocast(device_type=h.device.type, enabled=False):
            h = h.float()  # (B, N, H)
            mu = self.mu_scale * self.mu_head(h).squeeze(-1)  # (B, N)
            cov_factor = self.factor_scale * self.factor_head(h)  # (B, N, k)
            cov_diag = self.variance_scale * F.softplus(self.variance_head(h).squeeze(-1)) + self.min_variance
        return mu, cov_factor, cov_diag


class FeatureSkip(nn.Module):
    """A linear path from each factor's features on the decision date to its expected return.

    ``mu_skip[b, i] = vol_h * (x_t[b, i] . w + c)``, one (w, c) shared by all factors: the pooled
    linear rule of the probe (docs/data.md), learnt with the model.  It has ``n_features + 1``
    parameters, so it can fit the rule that holds across factors and dates but cannot memorise
    the training span; its output is in units of the horizon volatility ``vol_h`` (not the return
    head's 0.1 ``vol_h``), so a coefficient of the probe's order (~0.01-0.03 per standardised
    feature) is within a few hundred Adam steps of lr 1e-4 (measured on mac_test: ~0.002 after 134
    steps, the steps' signs being noisy; docs/quality.md, A17).  Starts at zero: the model's first outputs are the
    model's without it (``model.heads.feature_skip``).
    """

    def __init__(self, n_features: int, scale: float):
        super().__init__()
        self.scale = float(scale)
        # Zeros, not nn.Linear's random init: building it draws nothing from the RNG stream.
        self.weight = nn.Parameter(torch.zeros(n_features))
        self.bias = nn.Parameter(torch.zeros(()))

    @torch.no_grad()
    def load_rule(self, intercept: float, coef) -> None:
        """Set the path to the linear rule ``mu = intercept + x_t . coef`` (returns, not vol_h units),
        e.g. the probe's ridge on the train split (``data.oracle.probe_coefficients``)."""
        coef = torch.as_tensor(coef, dtype=self.weight.dtype)
        check_shape("feature-skip coefficients", coef, tuple(self.weight.shape))
        self.weight.copy_(coef / self.scale)
        self.bias.fill_(float(intercept) / self.scale)

    def forward(self, x_t: torch.Tensor) -> torch.Tensor:
        """x_t (B, N, F) -> (B, N) float32, added to mu."""
        check_shape("features on the decision date", x_t, (None, None, self.weight.shape[0]))
        with torch.autocast(device_type=x_t.device.type, enabled=False):
            return self.scale * (x_t.float() @ self.weight + self.bias)
