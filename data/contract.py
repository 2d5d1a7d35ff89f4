"""Row-level checks of the panel contract, used by :func:`data.panel.read_panel`.

Each check raises :class:`DataError` naming the column, the first bad date or factor (rows are in
file order, which the date-order check makes chronological) and the fix.  R below is the number of
rows of the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from data.splits import min_panel_dates, purge_of
from core.config import DataConfig
from core.errors import DataError

FLOAT32_MAX = float(np.finfo(np.float32).max)
PERCENT_MEDIAN_ABS_RETURN = 0.1
"""A factor whose median |daily return| exceeds this (a typical day moving 10 %) is in percent."""
MAX_DAILY_RETURN = 1.0
"""Largest plausible daily simple return of a factor portfolio (+100 % in one day)."""


def _first_null(col: pa.ChunkedArray) -> int:
    return int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])


def parse_dates(col: pa.ChunkedArray) -> np.ndarray:
    """The ``date`` column as datetime64[D], (R,).  Accepts date32/64, midnight timestamps, ISO strings."""
    if col.null_count:
        raise DataError(f"column 'date' has {col.null_count} missing values; the first at row {_first_null(col)}.")
    typ = col.type
    if pa.types.is_date(typ):
        return col.cast(pa.date32()).to_numpy().astype("datetime64[D]")
    if pa.types.is_timestamp(typ):
        stamps = col.to_numpy()  # datetime64[unit]; tz-aware columns come back in UTC
    elif pa.types.is_string(typ) or pa.types.is_large_string(typ):
        raw = pd.Series(col.to_numpy(zero_copy_only=False))
        parsed = pd.to_datetime(raw, format="ISO8601", errors="coerce")
        if parsed.isna().any():
            i = int(np.flatnonzero(parsed.isna().to_numpy())[0])
            raise DataError(f"column 'date' value {raw[i]!r} at row {i} is not a date; use ISO dates like 2001-01-31.")
        stamps = parsed.to_numpy()
    else:
        raise DataError(f"column 'date' has type {typ}; the contract needs a date (or timestamp) column.")
    days = stamps.astype("datetime64[D]")
    off = np.flatnonzero(days.astype(stamps.dtype) != stamps)
    if len(off):
        raise DataError(
            f"column 'date' value {stamps[off[0]]} (row {off[0]}) has a time of day; the contract needs "
            "calendar dates (one row per trading day). Normalise the timestamps to dates."
        )
    return days


def factor_codes(col: pa.ChunkedArray, dates: np.ndarray) -> tuple[np.ndarray, tuple[str, ...]]:
    """Integer code per row (R,) and the factor ids in order of first appearance (N,)."""
    if col.null_count:
        i = _first_null(col)
        raise DataError(f"column 'factor' is missing on date {dates[i]} (row {i}); every row needs a factor id.")
    typ = col.type
    if pa.types.is_dictionary(typ) and (pa.types.is_string(typ.value_type) or pa.types.is_large_string(typ.value_type)):
        col = col.cast(typ.value_type)
    elif not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        raise DataError(
            f"column 'factor' has type {typ}; the contract needs string ids (cast with df['factor'].astype(str))."
        )
    encoded = col.combine_chunks().dictionary_encode()
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)  # (R,)
    return codes, tuple(encoded.dictionary.to_pylist())


def check_date_order(dates: np.ndarray) -> None:
    """The file's dates must be non-decreasing (rows of a date together, dates in order)."""
    back = np.flatnonzero(dates[1:] < dates[:-1])
    if len(back):
        i = back[0] + 1
        raise DataError(
            f"column 'date' is not sorted: {dates[i]} (row {i}) comes after {dates[i - 1]}. "
            "Sort the file by date (then factor)."
        )


def numeric_column(col: pa.ChunkedArray, name: str, dates, factors, codes) -> np.ndarray:
    """A numeric column as float64 (R,), nulls as NaN.  Refuses text, booleans and other types."""
    typ = col.type
    if pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_decimal(typ):
        return col.cast(pa.float64()).to_numpy().astype(np.float64, copy=False)
    if pa.types.is_string(typ) or pa.types.is_large_string(typ):
        raw = pd.Series(col.to_numpy(zero_copy_only=False))
        bad = pd.to_numeric(raw, errors="coerce").isna() & raw.notna()
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(
                f"column {name!r} (type {typ}) has non-numeric value {raw[i]!r} on date {dates[i]}, factor "
                f"{factors[codes[i]]!r}; it must be numeric (float)."
            )
        raise DataError(f"column {name!r} holds numbers stored as text (type {typ}); write it as float.")
    raise DataError(f"column {name!r} has non-numeric type {typ}; it must be numeric (float).")


def check_finite(values: np.ndarray, name: str, dates, factors, codes) -> None:
    """Refuse NaN / inf / missing values, and values that overflow float32 (the feature dtype)."""
    bad = ~np.isfinite(values)
    if name != "ret":
        bad |= np.abs(values) > FLOAT32_MAX
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        v = values[i]
        kind = "NaN (or missing)" if np.isnan(v) else "inf" if np.isinf(v) else f"{v:g}, beyond float32"
        raise DataError(
            f"column {name!r} has {int(bad.sum())} bad value(s) (NaN, missing, inf or beyond float32); the first "
            f"is {kind} on date {dates[i]}, factor {factors[codes[i]]!r}. Fill or drop them before training."
        )


def check_return_units(returns: np.ndarray, dates: np.ndarray, factors) -> None:
    """Refuse ``ret`` that is not a daily simple return in decimals (0.01 = 1 %).

    ``returns`` is (T, N) float64, ``dates`` (T,), ``factors`` (N,).  Percent units are refused, not
    rescaled: a guessed factor of 100 would be a silent fallback.
    """
    median_abs = np.median(np.abs(returns), axis=0)  # (N,)
    percent_like = np.flatnonzero(median_abs > PERCENT_MEDIAN_ABS_RETURN)
    if len(percent_like):
        i = percent_like[0]
        raise DataError(
            f"column 'ret' looks like percent: factor {factors[i]!r} has a median |daily return| of "
            f"{median_abs[i]:.3g} (> {PERCENT_MEDIAN_ABS_RETURN}; {len(percent_like)} factor(s) in all). "
            "The contract wants decimals (0.015 = 1.5 %): divide the column by 100, or rebuild the panel "
            "with python -m data.build_panel --percent."
        )
    low, high = returns <= -1.0, returns > MAX_DAILY_RETURN  # (T, N)
    for bad, rule in ((low, "a daily simple return must be > -1 (-100 %)"),
                      (high, f"a factor does not gain more than {MAX_DAILY_RETURN:g} (+100 %) in a day")):
        if bad.any():
            t, i = np.argwhere(bad)[0]
            raise DataError(
                f"column 'ret' has {returns[t, i]:g} on date {dates[t]}, factor {factors[i]!r} "
                f"({int(bad.sum())} such value(s)): {rule}. Fix that cell; if the file is in percent, divide "
                "the column by 100."
            )


def date_codes(dates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Date index of each row (R,) and the unique dates (T,), for non-decreasing ``dates``."""
    new = np.concatenate([[True], dates[1:] != dates[:-1]])  # (R,)
    return np.cumsum(new) - 1, dates[new]


def cell_order(day_codes: np.ndarray, codes: np.ndarray, unique_dates: np.ndarray, factors) -> np.ndarray:
    """Flat cell ``date * N + factor`` of each row (R,); refuses duplicate and missing cells."""
    n = len(factors)
    cell = day_codes * n + codes  # (R,)
    counts = np.bincount(cell, minlength=len(unique_dates) * n)  # (T*N,)
    if (counts > 1).any():
        i = int(np.flatnonzero(counts[cell] > 1)[0])
        raise DataError(
            f"duplicate (date, factor) rows: ({unique_dates[day_codes[i]]}, {factors[codes[i]]!r}) appears "
            f"{counts[cell[i]]} times ({int((counts > 1).sum())} duplicated cells in all). Keep one row per "
            "(date, factor)."
        )
    if (counts == 0).any():
        c = int(np.flatnonzero(counts == 0)[0])
        raise DataError(
            f"missing (date, factor) cell: no row for factor {factors[c % n]!r} on {unique_dates[c // n]} "
            f"({int((counts == 0).sum())} missing cells in all). Every factor needs a row on every date: "
            "fill the gaps or drop the factor / dates."
        )
    return cell


def check_sizes(n_factors: int, n_dates: int, data_cfg: DataConfig, path: Path) -> None:
    """Factor count against the config, and enough dates for the windows and three splits."""
    if n_factors != data_cfg.num_factors:
        raise DataError(
            f"panel file {str(path)!r} has {n_factors} factors but data.num_factors = {data_cfg.num_factors}. "
            "Set data.num_factors to match or rebuild the panel."
        )
    need = min_panel_dates(
        data_cfg.lookback_days, data_cfg.prediction_horizon, data_cfg.train_fraction,
        data_cfg.val_fraction, purge_of(data_cfg),
    )
    if n_dates < need:
        raise DataError(
            f"panel file {str(path)!r} has too few dates: {n_dates}, but lookback_days "
            f"{data_cfg.lookback_days} + prediction_horizon {data_cfg.prediction_horizon} + three purged "
            f"splits need at least {need}. Use a longer panel or a shorter data.lookback_days."
        )
