"""The report's curves against pandas / skfolio, and the four PNGs from seeded policies (no Ray)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from skfolio.measures import get_drawdowns

from data.scoring import score_weights
from ray_jobs.report_plots import drawdowns, plot_report, rolling_sharpe

H = 5


def test_rolling_sharpe_and_drawdowns_match_pandas_and_skfolio():
    net = np.random.default_rng(0).normal(0.002, 0.02, 120)
    window = round(252 / H)
    rolled = pd.Series(net).rolling(window)
    expected = (rolled.mean() / rolled.std() * math.sqrt(252 / H)).to_numpy()
    np.testing.assert_allclose(rolling_sharpe(net, H), expected, rtol=1e-10, equal_nan=True)
    np.testing.assert_allclose(drawdowns(net), -get_drawdowns(net, compounded=True), atol=1e-12)


def test_plot_report_writes_four_pngs(tmp_path):
    rng = np.random.default_rng(1)
    k, n = 80, 12
    r = rng.normal(0.001, 0.02, (k, n))
    results = {}
    for name in ("ensemble", "seed 1", "seed 2", "1/N"):
        w = rng.dirichlet(np.ones(n), k) if name != "1/N" else np.full((k, n), 1 / n)
        results[name] = score_weights(np.arange(k), w, np.vstack([np.full((1, n), 1 / n), w[:-1]]), r, 0.001, H)
    dates = np.datetime64("2020-01-03") + 7 * np.arange(k)  # weekly rebalances
    paths = plot_report(results, dates, [f"F{i}" for i in range(n)], tmp_path)
    assert [p.split("/")[-1] for p in paths] == ["equity.png", "drawdown.png", "rolling_sharpe.png", "weights.png"]
    assert all((tmp_path / p.split("/")[-1]).stat().st_size > 10_000 for p in paths)
