"""Panel contract: every malformed file is refused with a DataError naming the problem."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from panel_helpers import N_SMALL, make_returns, small_cfg
from data.build_panel import FEATURE_NAMES, WARMUP_DAYS
from data.panel import Panel, read_panel, write_panel
from model.errors import DataError


DAY = [str(d.date()) for d in make_returns().index[WARMUP_DAYS:]]  # panel dates of the good file


def _write(df: pd.DataFrame, path) -> None:
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), path)


def _nan_feature(df):
    df.loc[5 * N_SMALL + 2, "ret_5d"] = np.nan  # 6th date, factor F2
    return df


def _inf_ret(df):
    df.loc[7 * N_SMALL + 1, "ret"] = np.inf
    return df


def _text_value(df):
    df["vol_21d"] = df["vol_21d"].astype(str)
    df.loc[3 * N_SMALL + 4, "vol_21d"] = "abc"
    return df


def _swap_dates(df):
    a, b = df.iloc[: N_SMALL].copy(), df.iloc[N_SMALL: 2 * N_SMALL].copy()
    return pd.concat([b, a, df.iloc[2 * N_SMALL:]], ignore_index=True)


def _date_block_again(df):
    return pd.concat([df, df.iloc[:N_SMALL]], ignore_index=True)


def _time_of_day(df):
    df["date"] = pd.to_datetime(df["date"])
    df.loc[0, "date"] = df.loc[0, "date"] + pd.Timedelta(hours=15)
    return df


# (case id, mutation of the good long DataFrame, regex the message must match).  Duplicate column
# names and unreadable files need hand-made files: see the tests after this one.
BAD_CASES = [
    ("missing_ret", lambda df: df.drop(columns="ret"), r"missing column\(s\) \['ret'\]"),
    ("missing_date", lambda df: df.drop(columns="date"), r"missing column\(s\) \['date'\]"),
    ("missing_factor", lambda df: df.drop(columns="factor"), r"missing column\(s\) \['factor'\]"),
    ("extra_column", lambda df: df.assign(extra=1.0), r"10 feature columns.*'extra'.*num_features = 9"),
    ("too_few_features", lambda df: df.drop(columns="vol_63d"), r"8 feature columns.*num_features = 9"),
    ("text_value", _text_value, rf"column 'vol_21d' \(type \w+\) has non-numeric value 'abc' on date {DAY[3]}, factor 'F4'"),
    ("bool_column", lambda df: df.assign(ret_1d=df["ret_1d"] > 0), r"column 'ret_1d' has non-numeric type bool"),
    ("nan_feature", _nan_feature, rf"column 'ret_5d' has 1 bad value.*first is NaN \(or missing\) on date {DAY[5]}, factor 'F2'"),
    ("inf_return", _inf_ret, rf"column 'ret' has 1 bad value.*first is inf on date {DAY[7]}, factor 'F1'"),
    ("float32_overflow", lambda df: df.assign(ret_1d=df["ret_1d"].astype(float) * 1e300),
     r"column 'ret_1d' has \d+ bad value.*first is -?[\d.]+e\+\d+, beyond float32"),
    ("duplicate_row", lambda df: pd.concat([df.iloc[:1], df], ignore_index=True),
     rf"duplicate \(date, factor\) rows: \({DAY[0]}, 'F0'\) appears 2 times"),
    ("missing_cell", lambda df: df.drop(index=4 * N_SMALL + 3).reset_index(drop=True),
     rf"missing \(date, factor\) cell: no row for factor 'F3' on {DAY[4]}"),
    ("unsorted_dates", _swap_dates, rf"column 'date' is not sorted: {DAY[0]} \(row {N_SMALL}\) comes after {DAY[1]}"),
    ("date_block_repeated", _date_block_again, r"column 'date' is not sorted"),
    ("time_of_day", _time_of_day, r"time of day"),
    ("null_factor", lambda df: df.assign(factor=df["factor"].where(df.index != 9, None)), r"column 'factor' is missing on date"),
    ("int_factor", lambda df: df.assign(factor=df["factor"].str[1:].astype(int)), r"factor' has type int64.*string ids"),
    ("wrong_factor_count", lambda df: df[df["factor"] != "F5"], r"has 5 factors but data.num_factors = 6"),
    ("too_few_dates", lambda df: df.iloc[: 30 * N_SMALL], r"too few dates: 30.*at least \d+"),
    ("empty", lambda df: df.iloc[:0], r"is empty \(0 rows"),
]


@pytest.mark.parametrize("case, mutate, pattern", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_panel_is_refused(tmp_path, long_panel, case, mutate, pattern):
    path = tmp_path / f"{case}.parquet"
    _write(mutate(long_panel.copy()), path)
    with pytest.raises(DataError, match=pattern):
        read_panel(path, small_cfg().data)


def test_duplicate_column_is_refused(tmp_path, long_panel):
    table = pa.Table.from_pandas(long_panel, preserve_index=False)
    table = table.append_column("ret_1d", table.column("ret_1d"))
    pq.write_table(table, tmp_path / "dup.parquet")
    with pytest.raises(DataError, match=r"column 'ret_1d' appears twice"):
        read_panel(tmp_path / "dup.parquet")


def test_missing_and_unreadable_files_are_refused(tmp_path):
    with pytest.raises(DataError, match=r"does not exist.*build_panel"):
        read_panel(tmp_path / "nope.parquet")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"not a readable Parquet file"):
        read_panel(tmp_path / "junk.parquet")


def test_good_panel_round_trips(panel_file, long_panel):
    panel = read_panel(panel_file, small_cfg().data)
    t_len = len(long_panel) // N_SMALL
    assert panel.shape == (t_len, N_SMALL, len(FEATURE_NAMES))
    assert panel.features.dtype == np.float32 and panel.returns.dtype == np.float64
    assert panel.dates.dtype == np.dtype("datetime64[D]")
    assert panel.factors == tuple(f"F{i}" for i in range(N_SMALL))
    assert panel.feature_names == FEATURE_NAMES
    wide_ret = long_panel.pivot(index="date", columns="factor", values="ret")[list(panel.factors)]
    np.testing.assert_array_equal(panel.returns, wide_ret.to_numpy())
    wide_mom = long_panel.pivot(index="date", columns="factor", values="mom_252_21")[list(panel.factors)]
    np.testing.assert_array_equal(panel.features[:, :, FEATURE_NAMES.index("mom_252_21")], wide_mom.to_numpy())
    assert not panel.features.flags.writeable


def test_row_order_within_a_date_does_not_matter(tmp_path, long_panel, panel_file):
    shuffled = long_panel.groupby("date", sort=True, group_keys=False).sample(frac=1.0, random_state=3)
    _write(shuffled, tmp_path / "shuffled.parquet")
    a, b = read_panel(panel_file), read_panel(tmp_path / "shuffled.parquet")
    # factor order is the order of first appearance, so compare through the names
    perm = [b.factors.index(f) for f in a.factors]
    np.testing.assert_array_equal(a.features, b.features[:, perm])
    np.testing.assert_array_equal(a.returns, b.returns[:, perm])


def test_fingerprint_identifies_the_content(panel_file):
    panel = read_panel(panel_file)
    same = Panel.from_arrays(panel.dates, panel.factors, panel.feature_names, panel.features, panel.returns)
    assert same.fingerprint == panel.fingerprint
    returns = panel.returns.copy()
    returns[-1, 0] += 1e-12
    changed = Panel.from_arrays(panel.dates, panel.factors, panel.feature_names, panel.features, returns)
    assert changed.fingerprint != panel.fingerprint


def test_write_panel_refuses_to_overwrite(tmp_path, long_panel):
    path = tmp_path / "out.parquet"
    digest = write_panel(long_panel, path)
    with pytest.raises(DataError, match=r"exists; pass --force"):
        write_panel(long_panel.iloc[:N_SMALL], path)
    assert write_panel(long_panel, path, overwrite=True) == digest  # same data, same bytes
    assert [p.name for p in tmp_path.iterdir()] == ["out.parquet"]  # no temp file left behind
