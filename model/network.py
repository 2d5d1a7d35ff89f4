"""The end-to-end model: xLSTM encoder -> moment heads -> differentiable portfolio layer.

x (B, L, N, F) --encoder--> h (B, H) --heads--> mu (B, N), cov_factor (B, N, k), cov_diag (B, N)
--portfolio layer (float64)--> weights (B, N).

The encoder and heads run in float32 (bf16 under autocast, on CUDA or CPU; the heads' outputs stay
float32) and may be compiled as one graph (:meth:`XLSTMPortfolio.compile_moments`); the
portfolio layer stays eager, receives float64 copies and solves outside autocast.  Apple MPS has
no float64, so on MPS the solve (and the float64 loss) runs on the CPU: the moments cross to the
CPU inside autograd and the weights come back on the CPU (:func:`solve_device`).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import nn

from core.config import Config
from core.errors import ConfigError
from model.compiled import RECOMPILE_LIMIT, CompiledMoments
from model.encoder import XLSTMEncoder
from model.heads import FactorHeads, FeatureSkip, MomentHeads, check_shape, horizon_vol
from model.spec import ModelSpec
from portfolio.layer import PortfolioLayer


def solve_device(device: torch.device) -> torch.device:
    """Where the float64 portfolio solve runs for a model on ``device``: the CPU for MPS."""
    return torch.device("cpu") if device.type == "mps" else device


class ModelOutput(NamedTuple):
    """What one forward pass returns (a NamedTuple: fine for torch.compile and DDP)."""

    mu: torch.Tensor
    """(B, N) float32: expected simple returns over the horizon."""
    cov_factor: torch.Tensor
    """(B, N, k) float32: loadings B of Sigma = B B^T + diag(d)."""
    cov_diag: torch.Tensor
    """(B, N) float32: idiosyncratic variances d > 0."""
    weights: torch.Tensor
    """(B, N) float64: portfolio weights, on ``solve_device`` of the model's device."""


class XLSTMPortfolio(nn.Module):
    """xLSTM portfolio model built from its model-only spec (:class:`model.spec.ModelSpec`).

    Parameters
    ----------
    spec : ModelSpec
        Encoder, heads, portfolio problem, panel shape and block precision; nothing of training or
        Ray. ``XLSTMPortfolio.from_config(cfg, device)`` takes the slice of a run config.
    device : str
        Where the model runs ("cpu", "cuda", "cuda:1", "mps"): picks the sLSTM backend, and the
        model is moved there.  Refused (DeviceError) if unavailable.
    """

    def __init__(self, spec: ModelSpec, device: str = "cpu"):
        super().__init__()
        if not isinstance(spec, ModelSpec):
            raise TypeError(
                f"XLSTMPortfolio takes a ModelSpec, got {type(spec).__name__}; "
                "use XLSTMPortfolio.from_config(cfg, device) for a run config."
            )
        self.spec = spec
        self.n_assets, self.cov_rank = spec.num_factors, spec.heads.cov_rank
        self.encoder = XLSTMEncoder(spec, device)
        heads = FactorHeads if spec.encoder.layout == "factorwise" else MomentHeads
        self.heads = heads(
            hidden_dim=spec.encoder.hidden_dim,
            n_assets=self.n_assets,
            cov_rank=self.cov_rank,
            min_variance=spec.heads.min_variance,
            horizon=spec.prediction_horizon,
        )
        self.portfolio = PortfolioLayer(self.n_assets, self.cov_rank, spec.portfolio)
        self.feature_skip: FeatureSkip | None = None
        if spec.heads.feature_skip:  # built last and from zeros: the other parameters and the RNG stream are unchanged
            self.feature_skip = FeatureSkip(spec.num_features, horizon_vol(spec.prediction_horizon))
        self.compiled_moments: CompiledMoments | None = None
        """Set by :meth:`compile_moments`; None = eager."""
        self.to(device)

    @classmethod
    def from_config(cls, cfg: Config, device: str = "cpu") -> "XLSTMPortfolio":
        """The model of a run config (its model, data-shape, portfolio and precision slice)."""
        return cls(ModelSpec.of(cfg), device)

    def calibrated_parameters(self) -> list[nn.Parameter]:
        """The trainable parameters whose gradients set the loss scales
        (``ray_jobs.steps.gradient_scales``): the deep model's, not the ``feature_skip`` path's.
        Its few parameters (output unit 10x the return head's) would otherwise dominate the return
        term's norm and rescale every term; it starts at zero, so with it the scales are exactly
        those of the model without it."""
        skip = set() if self.feature_skip is None else {id(p) for p in self.feature_skip.parameters()}
        return [p for p in self.parameters() if p.requires_grad and id(p) not in skip]

    def predict_moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Moments without the portfolio solve.

        Parameters
        ----------
        x : Tensor, shape (B, L, N, F)

        Returns
        -------
        mu (B, N), cov_factor (B, N, k), cov_diag (B, N), all float32.
        """
        if self.compiled_moments is not None:
            return self.compiled_moments(x)
        return self._moments(x)

    def _moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self._head_moments(self.encoder(x), x)  # h: (B, N, H) factorwise, (B, H) panel

    def _head_moments(self, h: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, cov_factor, cov_diag = self.heads(h)
        if self.feature_skip is not None:
            mu = mu + self.feature_skip(x[:, -1])  # features on the decision date (B, N, F)
        return mu, cov_factor, cov_diag

    def compile_moments(self, recompile_limit: int = RECOMPILE_LIMIT, backend: str = "inductor") -> None:
        """torch.compile the encoder + heads (one graph, :mod:`model.compiled`); the portfolio
        layer stays eager.  The modules and the state dict are unchanged (no ``_orig_mod.`` keys)."""
        self.compiled_moments = CompiledMoments(self._moments, recompile_limit, backend)

    def forward(self, x: torch.Tensor, w_prev: Optional[torch.Tensor] = None, cov_gradient: bool = True,
                encoder_gradient: bool = True) -> ModelOutput:
        """Moments and the portfolio chosen from them.

        Parameters
        ----------
        x : Tensor, shape (B, L, N, F)
            Feature windows (data before the decision date only).
        w_prev : Tensor, shape (B, N), optional
            Weights held before the rebalance (enter the transaction cost); None = equal weights 1/N.
        cov_gradient : bool
            False: the portfolio solve sees Sigma as a constant, so a loss on the weights trains mu
            only (``training.decision_gradient: mu``); the returned moments keep their graph.
            The weights are the same either way.
        encoder_gradient : bool
            False: the solve's moments come from the heads applied to the encoder's summary
            detached, so a loss on the weights trains the heads (and ``feature_skip``) but not the
            encoder, which then learns from the losses on the returned moments alone
            (``training.decision_gradient: heads``).  The heads run twice (they hold no dropout,
            so both passes give the same values); not with a compiled model.

        Returns
        -------
        ModelOutput
            mu, cov_factor, cov_diag (float32) and weights (B, N) float64.
        """
        if encoder_gradient:
            mu, cov_factor, cov_diag = self.predict_moments(x)  # (B, N), (B, N, k), (B, N)
            solve_moments = (mu, cov_factor, cov_diag)
        else:
            if self.compiled_moments is not None:
                raise ConfigError(
                    "training.decision_gradient = heads runs the heads twice outside the compiled graph; "
                    "set training.compile: false with it."
                )
            h = self.encoder(x)
            mu, cov_factor, cov_diag = self._head_moments(h, x)
            solve_moments = self._head_moments(h.detach(), x)
        batch = mu.shape[0]
        dev = solve_device(mu.device)
        if w_prev is None:
            w_prev = torch.full((batch, self.n_assets), 1.0 / self.n_assets, dtype=torch.float64, device=dev)
        else:
            check_shape("w_prev", w_prev, (batch, self.n_assets), hint="(batch, factors) like x")
            w_prev = w_prev.to(device=dev, dtype=torch.float64)
        # The solve is float64 and must not be autocast to bf16.
        with torch.autocast(device_type=mu.device.type, enabled=False):
            solve_mu, solve_factor, solve_diag = solve_moments
            solve_cov = (solve_factor, solve_diag) if cov_gradient else (solve_factor.detach(), solve_diag.detach())
            moments = [t.to(dev).double() for t in (solve_mu, *solve_cov)]
            weights = self.portfolio(*moments, w_prev)  # (B, N)
        check_shape("weights from the portfolio layer", weights, (batch, self.n_assets))
        return ModelOutput(mu, cov_factor, cov_diag, weights)
