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


def _results(k: int = 80, n: int = 12):
    rng = np.random.default_rng(1)
    r = rng.normal(0.001, 0.02, (k, n))
    results = {}
    for name in ("ensemble", "seed 1", "seed 2", "1/N"):
        w = rng.dirichlet(np.ones(n), k) if name != "1/N" else np.full((k, n), 1 / n)
        results[name] = score_weights(np.arange(k), w, np.vstack([np.full((1, n), 1 / n), w[:-1]]), r, 0.001, H)
    dates = np.datetime64("2020-01-03") + 7 * np.arange(k)  # weekly rebalances
    return results, dates, [f"F{i}" for i in range(n)]


PNGS = ["equity.png", "drawdown.png", "rolling_sharpe.png", "weights.png"]


def test_plot_report_writes_four_pngs(tmp_path):
    names = plot_report(*_results(), tmp_path)
    assert names == PNGS
    assert all((tmp_path / name).stat().st_size > 10_000 for name in names)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(PNGS)  # no temporary file left behind


def test_plot_report_writes_to_a_bucket(tmp_path):
    """A walk-forward run on --storage s3://... writes its PNGs as objects (moto on 127.0.0.1)."""
    from core.storage import as_path
    from s3_helpers import bucket_files, s3_bucket

    with s3_bucket(tmp_path) as query:
        names = plot_report(*_results(), as_path(f"s3://runs-bucket/wf/report?{query}"))
        files = bucket_files(f"s3://runs-bucket/wf?{query}")
    assert names == PNGS
    assert sorted(files) == sorted(f"report/{name}" for name in PNGS)
    assert all(size > 10_000 for size in files.values())
