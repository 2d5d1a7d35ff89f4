"""Featurizer: matches an independent computation, uses no future data; the build CLI."""

from __future__ import annotations

import math
import statistics
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from panel_helpers import REPO, make_returns
from data.build_panel import FEATURE_NAMES, WARMUP_DAYS, compute_features
from data.panel import read_panel
from core.errors import DataError


def _features_by_hand(r: np.ndarray, t: int) -> list[float]:
    """The nine features of one factor at input row t, with plain Python loops (docs/data.md)."""
    def std(a, b):  # sample std of r[a..b]
        return max(statistics.stdev(r[a: b + 1].tolist()), 1e-6)

    def compound(a, b):
        g = 1.0
        for x in r[a: b + 1]:
            g *= 1.0 + x
        return g - 1.0

    s5, s21, s63 = std(t - 4, t), std(t - 20, t), std(t - 62, t)
    wealth, peak = 1.0, 1.0  # wealth relative to the close of day t-251
    for x in r[t - 250: t + 1]:
        wealth *= 1.0 + x
        peak = max(peak, wealth)
    return [
        r[t] / s63,
        compound(t - 4, t) / (s63 * math.sqrt(5)),
        compound(t - 20, t) / (s63 * math.sqrt(21)),
        compound(t - 62, t) / (s63 * math.sqrt(63)),
        compound(t - 251, t - 21) / (s63 * math.sqrt(231)),
        math.log(s21 * math.sqrt(252)),
        math.log(s63 * math.sqrt(252)),
        math.log(s5 / s21),
        (wealth / peak - 1.0) / (s63 * math.sqrt(252)),
    ]


@pytest.mark.parametrize("row", [WARMUP_DAYS, WARMUP_DAYS + 1, 300, 419])
def test_features_match_hand_computation(returns_wide, long_panel, row):
    for factor in ("F0", "F3"):
        expect = _features_by_hand(returns_wide[factor].to_numpy(), row)
        got = long_panel[(long_panel["date"] == returns_wide.index[row]) & (long_panel["factor"] == factor)]
        assert len(got) == 1
        np.testing.assert_allclose(got[list(FEATURE_NAMES)].to_numpy()[0], expect, rtol=2e-5, atol=1e-6)
        assert got["ret"].iloc[0] == returns_wide[factor].iloc[row]


def test_features_match_pandas_rolling_apply(returns_wide, long_panel):
    """Whole columns against a different pandas API (rolling.apply over raw windows)."""
    wide = {c: long_panel.pivot(index="date", columns="factor", values=c)[returns_wide.columns] for c in FEATURE_NAMES}
    one_plus = returns_wide + 1.0
    s63 = returns_wide.rolling(63).apply(lambda a: max(np.std(a, ddof=1), 1e-6), raw=True)
    r21 = one_plus.rolling(21).apply(np.prod, raw=True) - 1.0
    mom = one_plus.shift(21).rolling(231).apply(np.prod, raw=True) - 1.0
    for name, ref in [("ret_21d", r21 / (s63 * np.sqrt(21))), ("mom_252_21", mom / (s63 * np.sqrt(231)))]:
        np.testing.assert_allclose(wide[name].to_numpy(), ref.iloc[WARMUP_DAYS:].to_numpy(), rtol=2e-5, atol=1e-6)


def test_features_use_no_future_returns(returns_wide, long_panel):
    """Changing returns after date t leaves every feature at dates <= t unchanged; at t it does not."""
    t = 330
    later = returns_wide.copy()
    later.iloc[t + 1:] = later.iloc[t + 1:] * -3.0 + 0.01
    before = long_panel[long_panel["date"] <= returns_wide.index[t]]
    after = compute_features(later)
    pd.testing.assert_frame_equal(before, after[after["date"] <= returns_wide.index[t]])
    at_t = returns_wide.copy()
    at_t.iloc[t] += 0.02
    changed = compute_features(at_t)
    mask = changed["date"] == returns_wide.index[t]
    assert (changed.loc[mask, list(FEATURE_NAMES)].to_numpy() != long_panel.loc[mask, list(FEATURE_NAMES)].to_numpy()).all()


def test_warmup_is_dropped_and_layout(returns_wide, long_panel):
    t_len, n = len(returns_wide) - WARMUP_DAYS, returns_wide.shape[1]
    assert len(long_panel) == t_len * n
    assert list(long_panel.columns) == ["date", "factor", "ret", *FEATURE_NAMES]
    assert long_panel["date"].iloc[0] == returns_wide.index[WARMUP_DAYS]
    assert list(long_panel["factor"].iloc[:n]) == list(returns_wide.columns)
    assert np.isfinite(long_panel[list(FEATURE_NAMES)].to_numpy()).all()


def test_stale_returns_do_not_give_inf(returns_wide):
    flat = returns_wide.copy()
    flat.iloc[300:310, 2] = 0.0  # ten identical returns: the 5-day std is 0
    out = compute_features(flat)
    assert np.isfinite(out[list(FEATURE_NAMES)].to_numpy()).all()


@pytest.mark.parametrize("mutate, pattern", [
    (lambda df: df.iloc[:200], r"200 dates; the features need 251 warm-up days"),
    (lambda df: df.iloc[::-1], r"strictly increasing"),
    (lambda df: df.assign(F1=np.where(np.arange(len(df)) == 260, np.nan, df["F1"])), r"factor 'F1' has a NaN/inf return on"),
    (lambda df: df.assign(F2=np.where(np.arange(len(df)) == 261, -1.5, df["F2"])), r"return of -1.5 .*--percent"),
    (lambda df: df.assign(F0=df["F0"].astype(str)), r"factor 'F0' has non-numeric returns"),
    (lambda df: df.rename(columns={"F1": "F0"}), r"factor column 'F0' appears twice"),
])
def test_bad_returns_are_refused(returns_wide, mutate, pattern):
    with pytest.raises(DataError, match=pattern):
        compute_features(mutate(returns_wide.copy()))


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "data.build_panel", *args], cwd=REPO, capture_output=True, text=True)


def test_build_panel_cli(tmp_path):
    returns = make_returns(n_days=300, n_factors=3, seed=11)
    (returns * 100).to_csv(tmp_path / "returns.csv", index_label="Date")
    out = tmp_path / "panel.parquet"
    assert "--returns" in _cli("--help").stdout
    done = _cli("--returns", str(tmp_path / "returns.csv"), "--out", str(out), "--percent")
    assert done.returncode == 0, done.stderr
    assert "wrote" in done.stdout and "49 dates" in done.stdout
    panel = read_panel(out)
    np.testing.assert_allclose(panel.returns, returns.to_numpy()[WARMUP_DAYS:], rtol=1e-12)
    again = _cli("--returns", str(tmp_path / "returns.csv"), "--out", str(out), "--percent")
    assert again.returncode != 0 and "exists; pass --force" in again.stderr
    assert _cli("--returns", str(tmp_path / "returns.csv"), "--out", str(out), "--percent", "--force").returncode == 0
    bad = _cli("--returns", str(tmp_path / "returns.csv"), "--out", str(tmp_path / "x.parquet"))
    assert bad.returncode != 0 and "--percent" in bad.stderr  # percent returns read as fractions
