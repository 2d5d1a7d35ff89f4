"""Load an ensemble's best checkpoints and turn its members into one portfolio.

Combination rules (``ensemble.combine``, documented in docs/ensemble.md):

* ``weights`` (default): each member solves its own portfolio (chained from its own previous
  weights); the ensemble holds their mean.  The constraint sets are convex, so the mean is feasible.
* ``moments``: the members' expected returns are averaged, and so are their covariances.  The
  average of ``Sigma_m = B_m B_m^T + diag(d_m)`` over M members is again a factor model:
  ``B = [B_1, ..., B_M] / sqrt(M)`` (rank M*k) and ``d = mean(d_m)``.  One portfolio solve on
  (mean mu, mean Sigma) gives the ensemble's weights, under the same constraints and cost.

Measured on the val split, the mean of weights kept the members' tilts, where the mean of moments
shrank mu towards 0 and held nearly the minimum-variance portfolio (docs/quality.md).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch

from model.checkpoint import load_model
from core.config import Config, stored_config
from core.errors import CheckpointError, ConfigError
from core.storage import StoragePath, as_path
from model.network import solve_device
from portfolio.layer import PortfolioLayer
from ray_jobs.members import config_differences, member_checkpoints
from ray_jobs.run_folder import FINISHED, SEEDS_DIR
from ray_jobs.steps import chain_solves


@dataclass
class Ensemble:
    """The members (eval mode, on ``device``) and their shared config / normaliser / data id."""

    members: dict[int, torch.nn.Module]
    cfg: Config
    normalizer: dict
    data_fingerprint: str
    device: torch.device

    @classmethod
    def load(cls, experiment_dir: Optional[StoragePath] = None, device: str = "cpu",
             runs: Optional[Sequence[str | Path]] = None) -> "Ensemble":
        """Best checkpoint of each seed, on any device (an H100 checkpoint loads on CPU).

        ``experiment_dir`` is a folder or a URI (``s3://BUCKET/runs/NAME``): the checkpoints are
        read from where the ensemble was trained, with ``torch.load(weights_only=True)``.

        The members are a Tune experiment's seeds (``experiment_dir``) or ``train.py`` run folders
        (``runs``, see :mod:`ray_jobs.members`); they must share one config and one panel.
        """
        members, payloads, paths = {}, {}, member_checkpoints(experiment_dir, runs)
        for seed, path in paths.items():
            model, payload = load_model(path, device=device)
            members[seed], payloads[seed] = model.eval(), payload
        first_seed, first = next(iter(payloads.items()))
        for seed, payload in payloads.items():
            differ = config_differences(first["config"], payload["config"])
            if differ:
                raise ConfigError(
                    f"{paths[seed]} (seed {seed}) was trained with another config than {paths[first_seed]} "
                    f"(seed {first_seed}): {'; '.join(differ[:5])}. An ensemble's members share one config: "
                    "retrain the odd one with the same --config and --set values, or leave it out."
                )
            if payload["data_fingerprint"] != first["data_fingerprint"]:
                raise CheckpointError(
                    f"seed {seed} was trained on other data ({payload['data_fingerprint'][:12]} vs "
                    f"{first['data_fingerprint'][:12]}): an ensemble needs one panel."
                )
        cfg = stored_config(first["config"], "the first member's stored config")
        return cls(members, cfg, first["normalizer"], first["data_fingerprint"], torch.device(device))

    @property
    def seeds(self) -> list[int]:
        return list(self.members)

    @torch.no_grad()
    def member_moments(self, x: torch.Tensor) -> dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """x (B, L, N, F) -> seed -> (mu (B, N), cov_factor (B, N, k), cov_diag (B, N))."""
        dev = solve_device(x.device)  # float64 moments: the CPU on MPS
        return {seed: tuple(t.to(dev).double() for t in m.predict_moments(x)) for seed, m in self.members.items()}

    @staticmethod
    def combine(moments) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Average mu and Sigma of the members; Sigma stays in factor form (rank M*k)."""
        mus, factors, diags = zip(*moments.values())
        m = len(mus)
        mu = torch.stack(mus).mean(0)  # (B, N)
        cov_factor = torch.cat(factors, dim=-1) / math.sqrt(m)  # (B, N, M*k)
        cov_diag = torch.stack(diags).mean(0)  # (B, N)
        return mu, cov_factor, cov_diag

    def layer(self, rank: int) -> PortfolioLayer:
        key = f"_layer_{rank}"
        if not hasattr(self, key):
            setattr(self, key, PortfolioLayer(self.cfg.data.num_factors, rank, self.cfg.portfolio))
        return getattr(self, key)

    @torch.no_grad()
    def weights(self, x: torch.Tensor, rule: str | None = None) -> torch.Tensor:
        """Chained rebalances over the decision windows x (K, L, N, F), in time order -> (K, N).

        ``rule``: "weights" or "moments" (see the module docstring); None = ``ensemble.combine``.
        """
        rule = rule or self.cfg.ensemble.combine
        if rule == "weights":
            return torch.stack(list(self.member_weights(x).values())).mean(0)  # (K, N)
        if rule != "moments":
            raise ConfigError(f"ensemble.combine = {rule!r} is unknown; use 'weights' or 'moments'.")
        mu, cov_factor, cov_diag = self.combine(self.member_moments(x))
        layer = self.layer(cov_factor.shape[-1])
        weights, _ = chain_solves(layer, mu, cov_factor, cov_diag, self.cfg.portfolio.tc_rate)
        return weights

    @torch.no_grad()
    def member_weights(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        """Each member's own chained weights (K, N), for the backtest's comparison."""
        out = {}
        for seed, (mu, cov_factor, cov_diag) in self.member_moments(x).items():
            out[seed], _ = chain_solves(self.layer(cov_factor.shape[-1]), mu, cov_factor, cov_diag, self.cfg.portfolio.tc_rate)
        return out


def load_finished(experiment_dir: StoragePath) -> dict[int, dict]:
    out = {}
    for run_dir in sorted((as_path(experiment_dir) / SEEDS_DIR).glob("seed_*")):
        if (run_dir / FINISHED).exists():
            out[int(run_dir.name.split("_", 1)[1])] = json.loads((run_dir / FINISHED).read_text())
    return out
