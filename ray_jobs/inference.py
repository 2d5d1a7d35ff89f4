"""Shared pieces of ``predict`` and ``backtest``: the panel an ensemble reads, and its windows."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import torch

from data import Normalizer, Panel, load_panel
from data.splits import rebalance_indices, splits_for
from core.errors import DataError
from core.storage import StoragePath
from ray_jobs.ensemble_model import Ensemble


@dataclass
class EnsembleInputs:
    """The ensemble and the panel it predicts on, normalised with the *training* statistics."""

    ensemble: Ensemble
    panel: Panel
    features: torch.Tensor  # (T, N, F) float32, normalised with the training-span statistics

    @classmethod
    def load(cls, experiment: Optional[StoragePath], data: Optional[str], device: str,
             runs: Optional[Sequence[str | Path]] = None) -> "EnsembleInputs":
        """The members of a Tune ``experiment`` or of ``train.py`` ``runs`` (one of the two), and the
        panel ``data``; by default the one they were trained on, which must still be the same
        (DataError otherwise: a backtest of another panel is asked for with ``data``, never implied)."""
        ensemble = Ensemble.load(experiment, device=device, runs=runs)
        cfg = ensemble.cfg
        panel = load_panel(cfg.data, data)
        normalizer = Normalizer.from_dict(ensemble.normalizer)
        if normalizer.feature_names != panel.feature_names:
            raise DataError(
                f"the panel's features {panel.feature_names} differ from the ones the ensemble was trained "
                f"on {normalizer.feature_names}; build the panel with python -m data.build_panel."
            )
        if panel.fingerprint != ensemble.data_fingerprint:
            if data is None:
                where = cfg.data.panel_path or "the embedded synthetic panel"
                raise DataError(
                    f"the ensemble was trained on a panel with fingerprint {ensemble.data_fingerprint[:12]}, but "
                    f"its config's panel ({where}) now has fingerprint {panel.fingerprint[:12]}: the file changed, "
                    "or the members were trained with --data before their checkpoints recorded it. Pass --data "
                    "with the training panel (or, to predict on another panel on purpose, with that one)."
                )
            print(f"note: predicting on a panel ({panel.fingerprint[:12]}) other than the training one "
                  f"({ensemble.data_fingerprint[:12]}); features use the training normalisation.")
        feats = torch.as_tensor(normalizer.transform(panel.features), dtype=torch.float32, device=device)
        return cls(ensemble, panel, feats)

    @property
    def lookback(self) -> int:
        return self.ensemble.cfg.data.lookback_days

    @property
    def horizon(self) -> int:
        return self.ensemble.cfg.data.prediction_horizon

    def windows(self, indices: np.ndarray) -> torch.Tensor:
        """Inputs (K, L, N, F) for decisions ``indices``: dates t-L+1..t only (no targets needed)."""
        idx = torch.as_tensor(np.array(indices), dtype=torch.int64, device=self.features.device)
        offsets = torch.arange(-self.lookback + 1, 1, device=idx.device)  # (L,)
        return self.features[idx[:, None] + offsets]  # (K, L, N, F)

    def decision_for_date(self, date: str) -> int:
        """Index of the last panel date on or before ``date``; it needs a full lookback."""
        target = np.datetime64(pd.Timestamp(date).date(), "D")
        pos = int(np.searchsorted(self.panel.dates, target, side="right")) - 1
        if pos < self.lookback - 1:
            first_ok = self.panel.dates[self.lookback - 1]
            raise DataError(
                f"--date {date}: a decision needs {self.lookback} days of history; the first possible "
                f"date in this panel is {first_ok}."
            )
        return pos

    def split_rebalances(self, split: str) -> np.ndarray:
        """Non-overlapping rebalance decisions (every horizon-th) of a split."""
        splits = splits_for(len(self.panel.dates), self.ensemble.cfg.data)
        return rebalance_indices(np.asarray(getattr(splits, split)), self.horizon)

    def long_frame(self, indices: np.ndarray, weights: np.ndarray) -> pd.DataFrame:
        """One row per (date, factor) with a ``weight`` column."""
        k, n = weights.shape
        return pd.DataFrame({
            "date": np.repeat(self.panel.dates[np.asarray(indices)], n),
            "factor": np.tile(np.asarray(self.panel.factors, dtype=object), k),
            "weight": weights.reshape(-1),
        })
