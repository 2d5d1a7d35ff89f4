"""Shared fixtures of the data tests: seeded small returns, real Parquet panels in tmp_path."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from data.build_panel import compute_features
from data.panel import write_panel
from panel_helpers import make_returns


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test uses a private synthetic cache, shared across the session (generated once)."""
    monkeypatch.setenv("XLSTM_PORTFOLIO_CACHE", str(tmp_path_factory.getbasetemp() / "synthetic_cache"))


@pytest.fixture(scope="session")
def returns_wide() -> pd.DataFrame:
    return make_returns()


@pytest.fixture(scope="session")
def long_panel(returns_wide) -> pd.DataFrame:
    return compute_features(returns_wide)


@pytest.fixture
def panel_file(tmp_path, long_panel) -> Path:
    path = tmp_path / "panel.parquet"
    write_panel(long_panel, path)
    return path
