"""The catalogue of malformed panels: each a mutation of a good long panel and the DataError it gets.

Used by the panel-reader test (``tests/data/test_data_panel.py``) and end to end through the
training entry points (``tests/test_bad_input.py``).  The good panel is
``compute_features(make_returns())``: N_SMALL factors F0..F5, rows ordered by date then factor.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from data.build_panel import WARMUP_DAYS
from panel_helpers import N_SMALL, make_returns

DAY = [str(d.date()) for d in make_returns().index[WARMUP_DAYS:]]  # panel dates of the good file


def write_parquet(df: pd.DataFrame, path) -> None:
    """Write a (possibly malformed) long panel as is: no checks, unlike ``data.panel.write_panel``."""
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), path)


def _set(df, day: int, factor: int, column: str, value):
    df.loc[day * N_SMALL + factor, column] = value
    return df


def _text_value(df):
    df["vol_21d"] = df["vol_21d"].astype(str)
    return _set(df, 3, 4, "vol_21d", "abc")


def _swap_dates(df):
    a, b = df.iloc[: N_SMALL].copy(), df.iloc[N_SMALL: 2 * N_SMALL].copy()
    return pd.concat([b, a, df.iloc[2 * N_SMALL:]], ignore_index=True)


def _time_of_day(df):
    df["date"] = pd.to_datetime(df["date"])
    df.loc[0, "date"] = df.loc[0, "date"] + pd.Timedelta(hours=15)
    return df


def _extra_factor(df):
    extra = df[df["factor"] == "F0"].assign(factor="F6")
    return pd.concat([df, extra]).sort_values("date", kind="stable").reset_index(drop=True)


# (case id, mutation of the good long DataFrame, regex the DataError message must match).
BAD_CASES = [
    ("missing_ret_column", lambda df: df.drop(columns="ret"), r"missing column\(s\) \['ret'\]"),
    ("missing_date_column", lambda df: df.drop(columns="date"), r"missing column\(s\) \['date'\]"),
    ("missing_factor_column", lambda df: df.drop(columns="factor"), r"missing column\(s\) \['factor'\]"),
    ("extra_feature", lambda df: df.assign(extra=1.0),
     r"10 feature columns.*'extra'.*num_features = 9\. Drop the extra"),
    ("too_few_features", lambda df: df.drop(columns="vol_63d"),
     r"8 feature columns.*num_features = 9\. Add the missing"),
    ("text_value", _text_value, rf"column 'vol_21d' \(type \w+\) has non-numeric value 'abc' on date {DAY[3]}, factor 'F4'"),
    ("bool_column", lambda df: df.assign(ret_1d=df["ret_1d"] > 0), r"column 'ret_1d' has non-numeric type bool"),
    ("nan_feature", lambda df: _set(df, 5, 2, "ret_5d", np.nan),
     rf"column 'ret_5d' has 1 bad value.*first is NaN \(or missing\) on date {DAY[5]}, factor 'F2'"),
    ("inf_return", lambda df: _set(df, 7, 1, "ret", np.inf),
     rf"column 'ret' has 1 bad value.*first is inf on date {DAY[7]}, factor 'F1'"),
    ("float32_overflow", lambda df: df.assign(ret_1d=df["ret_1d"].astype(float) * 1e300),
     r"column 'ret_1d' has \d+ bad value.*first is -?[\d.]+e\+\d+, beyond float32"),
    ("duplicate_row", lambda df: pd.concat([df.iloc[:1], df], ignore_index=True),
     rf"duplicate \(date, factor\) rows: \({DAY[0]}, 'F0'\) appears 2 times"),
    ("missing_cell", lambda df: df.drop(index=4 * N_SMALL + 3).reset_index(drop=True),
     rf"missing \(date, factor\) cell: no row for factor 'F3' on {DAY[4]}"),
    ("unsorted_dates", _swap_dates, rf"column 'date' is not sorted: {DAY[0]} \(row {N_SMALL}\) comes after {DAY[1]}"),
    ("date_block_repeated", lambda df: pd.concat([df, df.iloc[:N_SMALL]], ignore_index=True),
     r"column 'date' is not sorted"),
    ("time_of_day", _time_of_day, r"time of day"),
    ("null_factor", lambda df: df.assign(factor=df["factor"].where(df.index != 9, None)),
     r"column 'factor' is missing on date"),
    ("int_factor", lambda df: df.assign(factor=df["factor"].str[1:].astype(int)), r"factor' has type int64.*string ids"),
    ("missing_factor", lambda df: df[df["factor"] != "F5"], r"has 5 factors but data.num_factors = 6"),
    ("extra_factor", _extra_factor, r"has 7 factors but data.num_factors = 6"),
    ("percent_returns", lambda df: df.assign(ret=df["ret"] * 100),
     r"column 'ret' looks like percent: factor 'F0' has a median \|daily return\| of [\d.]+ \(> 0\.1; 6 factor\(s\)"
     r".*divide the column by 100"),
    ("return_below_minus_one", lambda df: _set(df, 8, 3, "ret", -1.5),
     rf"column 'ret' has -1\.5 on date {DAY[8]}, factor 'F3' \(1 such value\(s\)\): "
     r"a daily simple return must be > -1"),
    ("absurd_return", lambda df: _set(df, 9, 2, "ret", 250.0),
     rf"column 'ret' has 250 on date {DAY[9]}, factor 'F2'.*more than 1 \(\+100 %\) in a day"),
    ("too_few_dates", lambda df: df.iloc[: 30 * N_SMALL], r"too few dates: 30.*at least \d+"),
    ("empty", lambda df: df.iloc[:0], r"is empty \(0 rows"),
]

# Refused by ``data.prepare`` (it needs the training split), not by ``read_panel`` alone.
PREPARE_CASES = [
    ("zero_variance_feature", lambda df: df.assign(vol_63d=np.float32(0.25)),
     r"feature 'vol_63d' is constant over the training span.*std 0, mean 0\.25"),
]
