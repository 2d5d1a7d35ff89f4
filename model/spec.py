"""What a model is: the model-only spec :class:`XLSTMPortfolio` is built from.

A run's :class:`core.config.Config` holds five concerns (model, data, portfolio, training, Ray's
resources). A model needs a slice of three of them: the encoder and heads, the panel's shape
and the portfolio problem, plus the numeric precision its blocks are built for. Nothing of Ray,
of the optimiser or of where the run writes enters the model, so loading a checkpoint on another
machine rewrites nothing but the precision and the sLSTM kernel that runs the same weights
(:meth:`ModelSpec.for_device`).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Literal

import torch

from core.config import Config, EncoderConfig, HeadsConfig, PortfolioConfig

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    """Everything that decides what an :class:`~model.network.XLSTMPortfolio` computes."""

    encoder: EncoderConfig
    heads: HeadsConfig
    portfolio: PortfolioConfig
    lookback_days: int
    """Days per input window (the mLSTM causal mask is sized to it)."""
    prediction_horizon: int
    """Days of the predicted returns (sets the heads' output scale)."""
    num_factors: int
    num_features: int
    precision: Literal["float32", "bfloat16"] = "float32"
    """The CUDA sLSTM kernel's compute dtype (its parameters stay float32).  The pure-torch blocks
    take their dtype from the training loop's autocast (cuda or cpu), not from here."""

    @classmethod
    def of(cls, cfg: Config) -> "ModelSpec":
        """The model's slice of a run config."""
        d = cfg.data
        return cls(cfg.model.encoder, cfg.model.heads, cfg.portfolio, d.lookback_days, d.prediction_horizon,
                   d.num_factors, d.num_features, cfg.training.precision)

    def for_device(self, device: str) -> "ModelSpec":
        """The same model for ``device``: off CUDA, a float32 spec and no CUDA sLSTM kernel (a
        checkpoint is loaded off CUDA for inference, which runs without autocast).

        The weights are backend- and precision-neutral, so this changes how, not what, the model
        computes (an H100 checkpoint loads on a laptop).
        """
        if torch.device(device).type == "cuda":
            return self
        encoder = self.encoder
        if encoder.slstm_backend == "cuda":
            LOGGER.warning("model built with slstm_backend=cuda; running it on %s with 'auto'", device)
            encoder = dataclasses.replace(encoder, slstm_backend="auto")
        return dataclasses.replace(self, encoder=encoder, precision="float32")

    def architecture(self) -> tuple:
        """The parts that decide the parameters and outputs (not the kernel or precision that runs them)."""
        encoder = dataclasses.replace(self.encoder, slstm_backend="auto")
        return (encoder, self.heads, self.portfolio, self.lookback_days, self.prediction_horizon,
                self.num_factors, self.num_features)
