"""Windows: no look-ahead, targets and inputs equal independent computations, train-only normalisation."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from panel_helpers import small_cfg
from references import split_tensor, window_numpy
from data.build_panel import FEATURE_NAMES, WARMUP_DAYS, compute_features
from data.panel import Panel, write_panel
from data.windows import Normalizer, WindowSource, prepare
from core.errors import DataError, ShapeError

L, H = 10, 3  # lookback and horizon of small_cfg()


def _prepare_from(returns_wide: pd.DataFrame, tmp_path, name: str):
    path = tmp_path / f"{name}.parquet"
    write_panel(compute_features(returns_wide), path)
    return prepare(small_cfg(), str(path))


def test_gather_equals_window_numpy(panel_file):
    src = prepare(small_cfg(), str(panel_file)).window_source()
    gen = torch.Generator().manual_seed(0)
    idx = torch.randint(src.first_decision, src.last_decision + 1, (64,), generator=gen)
    x, r_daily, r_h = src.gather(idx)
    assert x.shape == (64, L, 6, 9) and r_daily.shape == (64, H, 6) and r_h.shape == (64, 6)
    assert x.dtype == r_daily.dtype == r_h.dtype == torch.float32
    for b, t in enumerate(idx.tolist()):
        xn, rn, rhn = window_numpy(src, t)
        np.testing.assert_array_equal(x[b].numpy(), xn)
        np.testing.assert_allclose(r_daily[b].numpy(), rn, rtol=1e-7)
        np.testing.assert_allclose(r_h[b].numpy(), rhn, rtol=1e-6, atol=1e-9)


def test_gather_refuses_invalid_indices(panel_file):
    src = prepare(small_cfg(), str(panel_file)).window_source()
    with pytest.raises(ShapeError, match=r"decision indices must lie in \[9, "):
        src.gather(torch.tensor([8]))
    with pytest.raises(ShapeError, match=r"must lie in"):
        src.gather(torch.tensor([src.n_dates - H]))
    with pytest.raises(ShapeError, match=r"1-D LongTensor of decision indices, got \(1, 1\) torch.int64"):
        src.gather(torch.tensor([[src.first_decision]]))
    with pytest.raises(ShapeError, match=r"1-D LongTensor of decision indices, got \(1,\) torch.int32"):
        src.gather(torch.tensor([src.first_decision], dtype=torch.int32))


def test_inputs_and_targets_equal_pandas(returns_wide, long_panel, panel_file):
    prep = prepare(small_cfg(), str(panel_file))
    src = prep.window_source()
    dates = prep.panel.dates
    fit_end_date = pd.Timestamp(dates[prep.splits.train[-1]])
    span = long_panel[long_panel["date"] <= fit_end_date][list(FEATURE_NAMES)].astype("float64")
    mean, std = span.mean(), span.std(ddof=0)
    for t in (prep.splits.train[0], prep.splits.val[3], prep.splits.test[-1]):
        x, r_daily, r_h = (a[0].numpy() for a in src.gather(torch.tensor([int(t)])))
        first, last = pd.Timestamp(dates[t - L + 1]), pd.Timestamp(dates[t])
        window = long_panel[(long_panel["date"] >= first) & (long_panel["date"] <= last)]
        expect = ((window[list(FEATURE_NAMES)] - mean) / std).to_numpy().reshape(L, 6, 9)
        np.testing.assert_allclose(x, expect, rtol=1e-4, atol=1e-5)
        row = t + WARMUP_DAYS  # the same date in the wide input table
        future = returns_wide.iloc[row + 1: row + H + 1]
        assert future.index[0] > pd.Timestamp(dates[t])
        np.testing.assert_allclose(r_daily, future.to_numpy(), rtol=1e-6)
        np.testing.assert_allclose(r_h, (future + 1).prod().to_numpy() - 1, rtol=1e-5, atol=1e-9)


def test_no_look_ahead_through_the_whole_pipeline(returns_wide, tmp_path):
    """Changing returns after t leaves the input at t unchanged (bitwise); changing them at t does not."""
    base = _prepare_from(returns_wide, tmp_path, "base")
    t = int(base.splits.test[5])
    row = t + WARMUP_DAYS
    later = returns_wide.copy()
    later.iloc[row + 1:] = -later.iloc[row + 1:] * 2 + 0.003
    changed_later = _prepare_from(later, tmp_path, "later")
    x0, r0, _ = base.window_source().gather(torch.tensor([t]))
    x1, r1, _ = changed_later.window_source().gather(torch.tensor([t]))
    assert torch.equal(x0, x1)
    assert not torch.equal(r0, r1)  # the targets do see the change: it is their days
    at_t = returns_wide.copy()
    at_t.iloc[row] += 0.01
    x2, _, _ = _prepare_from(at_t, tmp_path, "at_t").window_source().gather(torch.tensor([t]))
    assert not torch.equal(x0[0, -1], x2[0, -1]) and torch.equal(x0[0, :-1], x2[0, :-1])


def test_no_look_ahead_in_the_window_source(panel_file):
    """Same check on the panel arrays: any feature or return after t is invisible to x at t."""
    prep = prepare(small_cfg(), str(panel_file))
    p, t = prep.panel, int(prep.splits.val[0])
    feats, rets = p.features.copy(), p.returns.copy()
    feats[t + 1:] = 99.0
    rets[t + 1:] = 0.5
    other = Panel.from_arrays(p.dates, p.factors, p.feature_names, feats, rets)
    a = WindowSource(p, prep.normalizer, L, H).gather(torch.tensor([t]))
    b = WindowSource(other, prep.normalizer, L, H).gather(torch.tensor([t]))
    assert torch.equal(a[0], b[0])
    feats[t, 0, 0] += 1.0
    moved = Panel.from_arrays(p.dates, p.factors, p.feature_names, feats, rets)
    c = WindowSource(moved, prep.normalizer, L, H).gather(torch.tensor([t]))
    assert not torch.equal(a[0], c[0])


def test_normalizer_sees_the_training_span_only(panel_file):
    prep = prepare(small_cfg(), str(panel_file))
    end = int(prep.splits.train[-1])
    assert prep.normalizer.fit_end == end
    feats = prep.panel.features.copy()
    feats[end + 1:] = feats[end + 1:] * 5 + 3
    same = Normalizer.fit(feats, end, prep.panel.feature_names)
    np.testing.assert_array_equal(same.mean, prep.normalizer.mean)
    np.testing.assert_array_equal(same.std, prep.normalizer.std)
    feats[end] += 1.0
    moved = Normalizer.fit(feats, end, prep.panel.feature_names)
    assert (moved.mean != prep.normalizer.mean).all()
    assert Normalizer.from_dict(prep.normalizer.to_dict()).to_dict() == prep.normalizer.to_dict()


@pytest.mark.parametrize("const_until_end", [False, True])
def test_constant_feature_in_training_span_is_refused(tmp_path, long_panel, const_until_end):
    df = long_panel.copy()
    dates = np.sort(df["date"].unique())
    # constant over the training span; with const_until_end=False it varies later, which must not help
    cutoff = dates[-1] if const_until_end else dates[int(len(dates) * 0.75)]
    df.loc[df["date"] <= cutoff, "vol_ratio_5_21"] = np.float32(0.25)
    write_panel(df, tmp_path / "const.parquet")
    with pytest.raises(DataError, match=r"feature 'vol_ratio_5_21' is constant over the training span"):
        prepare(small_cfg(), str(tmp_path / "const.parquet"))


def test_prepare_prefers_the_argument_over_the_config(panel_file, tmp_path):
    cfg = small_cfg(f"data.panel_path={tmp_path / 'missing.parquet'}")
    with pytest.raises(DataError, match=r"does not exist"):
        prepare(cfg)
    assert prepare(cfg, str(panel_file)).panel.shape[1:] == (6, 9)


def test_split_tensors_feed_gather(panel_file):
    prep = prepare(small_cfg(), str(panel_file))
    idx = split_tensor(prep.splits, "val")
    assert idx.dtype == torch.long and idx.tolist() == prep.splits.val.tolist()
    x, _, _ = prep.window_source().gather(idx)
    assert x.shape[0] == len(prep.splits.val)


def test_panel_paths_are_made_absolute_for_the_workers(panel_file, tmp_path, monkeypatch):
    """Tune runs trials in their own folders: a relative panel path must reach them absolute."""
    from data.windows import absolute_panel_path

    cfg = small_cfg()
    monkeypatch.chdir(tmp_path)
    assert absolute_panel_path(cfg.data) is None  # the synthetic panel
    assert absolute_panel_path(cfg.data, "p.parquet") == str(tmp_path / "p.parquet")
    relative = os.path.relpath(panel_file, tmp_path)
    resolved = absolute_panel_path(cfg.data, relative)
    assert Path(resolved).is_absolute() and Path(resolved).samefile(panel_file)


def test_cross_section_normalisation_is_each_dates_z_score_and_the_probe_keeps_the_global_one(panel_file):
    # data.normalize = cross_section: each feature on each date standardised across that date's
    # factors (pandas reference, ddof 0); a date's inputs ignore every other date; the checkpoint
    # dict keeps the mode (an old one without it reads as global); the probe reads the global
    # standardisation either way, so its fit is the same reference.
    from data.oracle import horizon_returns, probe_coefficients

    glob = prepare(small_cfg(), str(panel_file))
    prep = prepare(small_cfg("data.normalize=cross_section"), str(panel_file))
    assert prep.normalizer.mode == "cross_section" and glob.normalizer.mode == "global"
    feats = prep.panel.features  # (T, N, F)
    got = prep.window_source().features.numpy()
    t_len, n, f = feats.shape
    long = pd.DataFrame(feats.reshape(-1, f).astype(np.float64), columns=list(FEATURE_NAMES))
    long["date"] = np.repeat(np.arange(t_len), n)
    grouped = long.groupby("date")[list(FEATURE_NAMES)]
    ref = (long[list(FEATURE_NAMES)] - grouped.transform("mean")) / grouped.transform(lambda c: c.std(ddof=0))
    np.testing.assert_allclose(got.reshape(-1, f), ref.to_numpy(), rtol=1e-5, atol=1e-5)
    assert not np.allclose(got, glob.window_source().features.numpy(), atol=1e-2)

    t = int(prep.splits.val[0])
    moved = feats.copy()
    moved[t + 1:] = moved[t + 1:] * 3 + 1
    moved[: t - 5] = -moved[: t - 5]
    again = prep.normalizer.transform(moved)
    np.testing.assert_array_equal(again[t - 5: t + 1], got[t - 5: t + 1])

    d = prep.normalizer.to_dict()
    assert Normalizer.from_dict(d).to_dict() == d
    assert Normalizer.from_dict({k: v for k, v in d.items() if k != "mode"}).mode == "global"
    r_h = horizon_returns(prep.panel.returns, prep.data_cfg.prediction_horizon)
    np.testing.assert_array_equal(probe_coefficients(prep, r_h), probe_coefficients(glob, r_h))


def test_cross_section_normalisation_refuses_a_feature_that_is_the_same_for_every_factor(panel_file):
    prep = prepare(small_cfg("data.normalize=cross_section"), str(panel_file))
    feats = prep.panel.features.copy()
    feats[7, :, 3] = 0.25  # one date on which feature 3 does not vary across the factors
    with pytest.raises(DataError, match=rf"feature '{FEATURE_NAMES[3]}' is the same for every factor on 1 date"):
        prep.normalizer.transform(feats)
    with pytest.raises(DataError, match="unknown normalisation 'rank'"):
        Normalizer.fit(feats, 20, prep.panel.feature_names, "rank")


def test_train_target_is_the_longer_spans_mean_return_cut_at_the_training_labels(returns_wide, panel_file):
    """training.target_days: a pandas reference, the horizon's own target when days == horizon,
    and no return after the training split's last label day can reach it."""
    days = 7
    prep = prepare(small_cfg(), str(panel_file))
    plain = prep.window_source()
    src = prep.window_source(target_days=days)
    train = torch.tensor(prep.splits.train)
    label_end = int(prep.splits.train[-1]) + H
    assert src.label_end == label_end
    # Without target_days, the target is the horizon return that gather gives.
    assert torch.equal(plain.train_target(train), plain.gather(train)[2])
    # The same span as the horizon: the horizon return (computed another way).
    same = prep.window_source(target_days=H)
    np.testing.assert_allclose(same.train_target(train).numpy(), plain.gather(train)[2].numpy(), rtol=1e-5, atol=1e-8)
    # pandas: the compounded return of the next n = min(days, label_end - t) days, to H days geometrically.
    target = src.train_target(train).numpy()
    for t in (int(train[0]), int(train[len(train) // 2]), label_end - days, label_end - days + 1, int(train[-1])):
        row = t + WARMUP_DAYS
        n = min(days, label_end - t)
        future = returns_wide.iloc[row + 1: row + n + 1]
        expect = (future + 1).prod().to_numpy() ** (H / n) - 1
        np.testing.assert_allclose(target[int((train == t).nonzero())], expect, rtol=1e-5, atol=1e-9)
    assert min(days, label_end - int(train[-1])) == H  # the last decision is cut to its own horizon
    # Returns after the label end (the purge, val and test) cannot move any training target.
    p = prep.panel
    rets = p.returns.copy()
    rets[label_end + 1:] = 0.5
    other = Panel.from_arrays(p.dates, p.factors, p.feature_names, p.features, rets)
    moved = WindowSource(other, prep.normalizer, L, H)
    moved.set_train_target(days, label_end)
    assert torch.equal(moved.train_target(train), src.train_target(train))
    rets[label_end] += 0.01  # the last label day itself does reach it
    moved = WindowSource(Panel.from_arrays(p.dates, p.factors, p.feature_names, p.features, rets), prep.normalizer, L, H)
    moved.set_train_target(days, label_end)
    assert not torch.equal(moved.train_target(train), src.train_target(train))
    # A decision whose horizon ends after the label end is refused, not cut short.
    with pytest.raises(ShapeError, match=r"after the label end"):
        src.train_target(torch.tensor([int(prep.splits.val[0])]))
