"""The offline S&P 500 panel (skfolio's bundled prices): contract, returns, config, refusal."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from data import prepare, read_panel
from data.build_panel import FEATURE_NAMES
from data.sp500 import build_sp500_panel, main
from core.config import load_config
from core.errors import DataError
from panel_helpers import REPO
from ray_jobs.backtest import ESTIMATION_DAYS

SP500_CONFIG = REPO / "configs" / "model_config_cpu_sp500.yaml"


@pytest.fixture(scope="module")
def prices() -> pd.DataFrame:
    from skfolio.datasets import load_sp500_dataset

    return load_sp500_dataset()


@pytest.fixture(scope="module")
def panel_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("sp500") / "sp500.parquet"
    assert main(["--out", str(path)]) == 0
    return path


def test_panel_has_the_20_stocks_and_passes_the_config(panel_path, prices):
    cfg = load_config(SP500_CONFIG)
    panel = read_panel(panel_path, cfg.data)
    assert cfg.data.num_factors == 20 and len(panel.factors) == 20
    assert list(panel.factors) == [str(c) for c in prices.columns]
    assert tuple(panel.feature_names) == FEATURE_NAMES
    prep = prepare(cfg, str(panel_path))
    for name, idx in prep.splits.items():  # each split holds years of decisions, not the bare minimum
        assert len(idx) > 4 * 252, name
    assert prep.splits.test[0] >= ESTIMATION_DAYS - 1  # the backtest's baselines have their year of history


def test_returns_equal_pct_change_of_the_prices(panel_path, prices):
    panel = read_panel(panel_path)
    expected = prices.pct_change().loc[pd.DatetimeIndex(panel.dates)]  # (T, 20)
    assert expected.notna().all().all()
    np.testing.assert_allclose(panel.returns, expected.to_numpy(), rtol=1e-12, atol=0)
    # the first panel date is the 252nd return date: the warm-up days are dropped, nothing else
    assert pd.Timestamp(panel.dates[0]) == prices.index[1 + 251]
    assert pd.Timestamp(panel.dates[-1]) == prices.index[-1]


def test_existing_file_is_refused_without_force(panel_path):
    before = panel_path.read_bytes()
    with pytest.raises(DataError, match="exists; pass --force to replace it"):
        build_sp500_panel(panel_path)
    assert main(["--out", str(panel_path)]) == 2
    assert panel_path.read_bytes() == before


def test_force_replaces_an_existing_file(tmp_path, prices, monkeypatch):
    import data.sp500

    monkeypatch.setattr(data.sp500, "sp500_prices", lambda: prices.iloc[:400])  # real prices, shorter: fast
    path = tmp_path / "panel.parquet"
    path.write_text("not a panel")
    assert main(["--out", str(path), "--force"]) == 0
    panel = read_panel(path)
    assert len(panel.dates) == 400 - 1 - 251 and len(panel.factors) == 20


def test_help_exits_zero(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "--force" in capsys.readouterr().out
