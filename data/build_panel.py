"""Featurizer and CLI: a wide table of daily returns -> the long factor panel (Parquet).

``python -m data.build_panel --returns RETURNS.(csv|parquet) --out PANEL.parquet [--force]``

The input is a wide table of daily *simple* returns: the date is the index (Parquet) or the first
column (CSV), one column per factor.  :func:`compute_features` turns it into the long panel of the
data contract (``docs/data.md``): one row per (date, factor) with ``date``, ``factor``, ``ret`` and
the nine feature columns of :data:`FEATURE_NAMES`.

Every feature at date t uses returns up to and including t (as of that day's close), never after.
With ``s63 = max(std(r[t-62..t]), VOL_FLOOR)`` (sample std, ddof=1) as the vol scale:

==================  ==========================================================================
``ret_1d``          r[t] / s63
``ret_5d``          (prod(1 + r[t-4..t]) - 1) / (s63 * sqrt(5))
``ret_21d``         (prod(1 + r[t-20..t]) - 1) / (s63 * sqrt(21))
``ret_63d``         (prod(1 + r[t-62..t]) - 1) / (s63 * sqrt(63))
``mom_252_21``      (prod(1 + r[t-251..t-21]) - 1) / (s63 * sqrt(231))   (12-1 momentum)
``vol_21d``         log(s21 * sqrt(252))    s21 = max(std(r[t-20..t]), VOL_FLOOR)
``vol_63d``         log(s63 * sqrt(252))
``vol_ratio_5_21``  log(s5 / s21)           s5 = max(std(r[t-4..t]), VOL_FLOOR)
``drawdown_252``    (W[t] / max(W[t-251..t]) - 1) / (s63 * sqrt(252)),  W = cumulative wealth
==================  ==========================================================================

The first :data:`WARMUP_DAYS` dates, where ``mom_252_21`` and ``drawdown_252`` are undefined, are
dropped: the panel starts at the 252nd input date.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from core.cli import CliParser, run_cli
from core.errors import DataError

FEATURE_NAMES: tuple[str, ...] = (
    "ret_1d", "ret_5d", "ret_21d", "ret_63d", "mom_252_21",
    "vol_21d", "vol_63d", "vol_ratio_5_21", "drawdown_252",
)
WARMUP_DAYS = 251
"""Input dates dropped at the start: the 252-day features need r[t-251..t]."""
VOL_FLOOR = 1e-6
"""Daily vol floor (0.0016 % a year): stale, constant returns would otherwise give log(0)."""


def check_returns_wide(returns_wide: pd.DataFrame) -> None:
    """Refuse a wide returns table the featurizer cannot use; messages name factor and date."""
    if returns_wide.shape[1] == 0 or returns_wide.shape[0] == 0:
        raise DataError(
            f"the returns table is empty ({returns_wide.shape[0]} dates x {returns_wide.shape[1]} "
            "factors); it needs one row per date and one column per factor."
        )
    names = [str(c) for c in returns_wide.columns]
    dup = pd.Index(names)[pd.Index(names).duplicated()]
    if len(dup):
        raise DataError(f"factor column {dup[0]!r} appears twice in the returns table; rename or drop one.")
    dates = pd.DatetimeIndex(returns_wide.index)
    if dates.hasnans:
        raise DataError("the returns table has a missing date in its index; drop that row.")
    bad = np.flatnonzero(np.diff(dates.asi8) <= 0)
    if len(bad):
        i = bad[0] + 1
        raise DataError(
            f"returns dates must be strictly increasing: {dates[i].date()} follows {dates[i - 1].date()} "
            f"(row {i}). Sort the table by date and drop duplicate dates."
        )
    if len(dates) <= WARMUP_DAYS:
        raise DataError(
            f"the returns table has {len(dates)} dates; the features need {WARMUP_DAYS} warm-up days "
            "plus the panel itself. Provide a longer history."
        )
    for col in returns_wide.columns:
        if not pd.api.types.is_numeric_dtype(returns_wide[col]) or pd.api.types.is_bool_dtype(returns_wide[col]):
            raise DataError(
                f"factor {str(col)!r} has non-numeric returns (dtype {returns_wide[col].dtype}); "
                "every factor column must hold numbers."
            )
    values = returns_wide.to_numpy(dtype=np.float64)  # (T, N)
    _check_values(values, dates, names)


def _check_values(values: np.ndarray, dates: pd.DatetimeIndex, names: list[str]) -> None:
    bad = ~np.isfinite(values)  # (T, N)
    if bad.any():
        t, i = np.argwhere(bad)[0]
        raise DataError(
            f"factor {names[i]!r} has a NaN/inf return on {dates[t].date()} ({int(bad.sum())} such cells "
            "in all). Drop that factor or those dates, or fill them, before building the panel."
        )
    low = values <= -1.0
    if low.any():
        t, i = np.argwhere(low)[0]
        raise DataError(
            f"factor {names[i]!r} has a return of {values[t, i]:g} on {dates[t].date()}: a daily simple "
            "return must be > -1. If the file is in percent, pass --percent."
        )


def _rolling_std(values: np.ndarray, window: int) -> np.ndarray:
    """Sample std (ddof=1) over the trailing ``window`` days, floored at VOL_FLOOR.  (T, N)."""
    sd = pd.DataFrame(values).rolling(window).std().to_numpy()  # (T, N), NaN before window-1
    return np.maximum(sd, VOL_FLOOR)


def _feature_array(values: np.ndarray) -> np.ndarray:
    """(T, N) daily returns -> (T, N, F) float64 features; rows < WARMUP_DAYS are partly NaN."""
    t_len, n = values.shape
    log_w = np.vstack([np.zeros((1, n)), np.cumsum(np.log1p(values), axis=0)])  # (T+1, N)
    # log_w[j + 1] is the log wealth after day j, so a trailing n-day return ending at t is
    # exp(log_w[t + 1] - log_w[t + 1 - n]) - 1; the log form keeps 30-year products accurate.
    idx = np.arange(t_len)

    def trailing(n_days: int, skip: int = 0) -> np.ndarray:
        end = idx + 1 - skip  # (T,)
        start = end - n_days
        out = np.full((t_len, n), np.nan)
        ok = start >= 0
        out[ok] = np.expm1(log_w[end[ok]] - log_w[start[ok]])
        return out  # (T, N)

    s5, s21, s63 = (_rolling_std(values, w) for w in (5, 21, 63))  # each (T, N)
    peak = pd.DataFrame(log_w[1:]).rolling(252).max().to_numpy()  # (T, N)
    feats = [
        values / s63,
        trailing(5) / (s63 * np.sqrt(5)),
        trailing(21) / (s63 * np.sqrt(21)),
        trailing(63) / (s63 * np.sqrt(63)),
        trailing(231, skip=21) / (s63 * np.sqrt(231)),
        np.log(s21 * np.sqrt(252)),
        np.log(s63 * np.sqrt(252)),
        np.log(s5 / s21),
        np.expm1(log_w[1:] - peak) / (s63 * np.sqrt(252)),
    ]
    return np.stack(feats, axis=-1)  # (T, N, F)


def compute_features(returns_wide: pd.DataFrame) -> pd.DataFrame:
    """Featurize a wide table of daily simple returns into the long panel.

    Parameters
    ----------
    returns_wide : DataFrame, (T_in, N)
        Daily simple returns; DatetimeIndex-like index of strictly increasing dates, one column
        per factor (the column name is the factor id).

    Returns
    -------
    DataFrame, (T * N) rows with T = T_in - WARMUP_DAYS
        Columns ``date`` (datetime64), ``factor`` (str), ``ret`` (float64, the return on that date)
        and the features of :data:`FEATURE_NAMES` (float32), rows ordered by date then factor in the
        input's column order.
    """
    check_returns_wide(returns_wide)
    values = returns_wide.to_numpy(dtype=np.float64)  # (T_in, N)
    feats = _feature_array(values)[WARMUP_DAYS:]  # (T, N, F)
    rets = values[WARMUP_DAYS:]  # (T, N)
    dates = pd.DatetimeIndex(returns_wide.index)[WARMUP_DAYS:]
    t_len, n, f = feats.shape
    if not np.isfinite(feats).all():
        t, i, k = np.argwhere(~np.isfinite(feats))[0]
        raise DataError(  # only reachable through a bug or float overflow: say where anyway
            f"feature {FEATURE_NAMES[k]!r} is not finite for factor {returns_wide.columns[i]!r} on "
            f"{dates[t].date()}; check that factor's returns around that date."
        )
    out = pd.DataFrame({
        "date": np.repeat(dates.values.astype("datetime64[D]"), n),
        "factor": np.tile(np.array([str(c) for c in returns_wide.columns], dtype=object), t_len),
        "ret": rets.reshape(-1),
    })
    flat = feats.reshape(t_len * n, f).astype(np.float32)  # (T*N, F)
    for k, name in enumerate(FEATURE_NAMES):
        out[name] = flat[:, k]
    return out


def read_returns(path: str | Path, percent: bool = False) -> pd.DataFrame:
    """Read a wide returns table (CSV: first column = date; Parquet: index or a ``date`` column)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"returns file {str(path)!r} does not exist.")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        df = pd.read_csv(path, index_col=0)
    elif suffix in (".parquet", ".pq"):
        df = pd.read_parquet(path)
        if "date" in df.columns:
            df = df.set_index("date")
    else:
        raise DataError(f"returns file {str(path)!r}: unknown suffix {suffix!r}; use .csv or .parquet.")
    try:
        df.index = pd.to_datetime(df.index, format="mixed" if suffix == ".csv" else None)
    except (ValueError, TypeError) as exc:
        raise DataError(
            f"returns file {str(path)!r}: the first column must hold dates (e.g. 2001-01-31); {exc}"
        ) from None
    df.columns = [str(c).strip() for c in df.columns]
    return df / 100.0 if percent else df


def build(returns: str, out: str, force: bool = False, percent: bool = False) -> None:
    """Read the wide returns table, featurize it and write the panel (refusing an existing --out)."""
    from data.panel import read_panel, write_panel

    out = Path(out)
    if out.exists() and not force:  # refuse before the work, not after it
        raise DataError(f"{out} exists; pass --force to replace it.")
    returns_wide = read_returns(returns, percent)
    print(f"read {returns_wide.shape[0]} dates x {returns_wide.shape[1]} factors from {returns}", flush=True)
    long = compute_features(returns_wide)
    print(f"computed {len(FEATURE_NAMES)} features; dropped {WARMUP_DAYS} warm-up dates", flush=True)
    write_panel(long, out, overwrite=force)
    panel = read_panel(out)
    print(
        f"wrote {out}: {len(panel.dates)} dates ({panel.dates[0]} .. {panel.dates[-1]}) x "
        f"{len(panel.factors)} factors x {len(panel.feature_names)} features, fingerprint {panel.fingerprint[:16]}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = CliParser(
        prog="python -m data.build_panel",
        description="Build the long factor panel (Parquet) from a wide table of daily simple returns.",
    )
    parser.add_argument("--returns", required=True, help="wide returns table: .csv (first column = date) or .parquet")
    parser.add_argument("--out", required=True, help="panel Parquet file to write")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    parser.add_argument("--percent", action="store_true", help="returns are in percent (Ken French CSVs)")
    args = parser.parse_args(argv)
    return run_cli(lambda: build(args.returns, args.out, args.force, args.percent))


if __name__ == "__main__":
    sys.exit(main())
