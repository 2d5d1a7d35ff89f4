"""Helpers of the tests that build small real panels (a uniquely named module: ``conftest`` is ambiguous)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from core.config import load_config

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "model_config_cpu_smoke.yaml"
N_SMALL, DAYS_SMALL = 6, 420
SMALL_OVERRIDES = [
    f"data.num_factors={N_SMALL}", "data.num_features=9", "data.lookback_days=10",
    "data.prediction_horizon=3", "data.purge_days=3", "portfolio.max_weight=0.5",
]


def make_returns(n_days: int = DAYS_SMALL, n_factors: int = N_SMALL, seed: int = 7) -> pd.DataFrame:
    """Seeded wide table of daily simple returns (fat-ish tails, some drift)."""
    rng = np.random.default_rng(seed)
    values = 0.01 * rng.standard_t(5, (n_days, n_factors)) + 0.0003  # (D, N)
    dates = pd.bdate_range("2001-01-01", periods=n_days)
    return pd.DataFrame(values, index=dates, columns=[f"F{i}" for i in range(n_factors)])


def small_cfg(*extra: str):
    """The smoke config shrunk to the small panel (6 factors, lookback 10, horizon 3)."""
    return load_config(SMOKE, [*SMALL_OVERRIDES, *extra])
