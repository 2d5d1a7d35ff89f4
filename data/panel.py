"""The factor panel: the in-memory :class:`Panel`, its strict Parquet reader and atomic writer.

Data contract (``docs/data.md``): Parquet, long format, one row per (date, factor):

- ``date``: a calendar date (date32 or a midnight timestamp, or ISO strings);
- ``factor``: the factor id (string);
- ``ret``: that factor's daily simple return on that date, used only to build targets;
- the feature columns: every other column, in file order; their count must equal
  ``data.num_features``.

Dates must be non-decreasing in the file and every (date, factor) cell present exactly once;
``ret`` is in decimals (0.01 = 1 %): percent units are refused (:func:`data.contract.check_return_units`).
:func:`read_panel` checks all of it before anything trains and raises :class:`DataError` naming
the column, the first bad date or factor, and the fix.  Factors keep their order of first
appearance in the file.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from data import contract
from core.config import DataConfig
from core.errors import DataError
from core.files import atomic_path

REQUIRED_COLUMNS = ("date", "factor", "ret")


@dataclass(frozen=True, eq=False)
class Panel:
    """A validated factor panel.  Arrays are read-only.

    Attributes
    ----------
    dates : np.ndarray, datetime64[D], (T,)
        Strictly increasing trading dates.
    factors : tuple of str, (N,)
    feature_names : tuple of str, (F,)
    features : np.ndarray, float32, (T, N, F)
        ``features[t]`` uses data up to and including ``dates[t]``.
    returns : np.ndarray, float64, (T, N)
        ``returns[t]``: daily simple return on ``dates[t]`` (targets only).
    fingerprint : str
        sha256 (hex) over dates, factor and feature names, features and returns: identifies the data
        in checkpoints.
    """

    dates: np.ndarray
    factors: tuple[str, ...]
    feature_names: tuple[str, ...]
    features: np.ndarray
    returns: np.ndarray
    fingerprint: str

    @classmethod
    def from_arrays(
        cls,
        dates: np.ndarray,
        factors: tuple[str, ...] | list[str],
        feature_names: tuple[str, ...] | list[str],
        features: np.ndarray,
        returns: np.ndarray,
    ) -> "Panel":
        """Build a panel (copies to read-only arrays of the contract dtypes, computes the fingerprint)."""
        dates = np.array(dates, dtype="datetime64[D]")  # (T,)
        features = np.array(features, dtype=np.float32)  # (T, N, F)
        returns = np.array(returns, dtype=np.float64)  # (T, N)
        factors, feature_names = tuple(map(str, factors)), tuple(map(str, feature_names))
        t_len, n, f = len(dates), len(factors), len(feature_names)
        if features.shape != (t_len, n, f) or returns.shape != (t_len, n):
            raise DataError(
                f"panel arrays disagree: features {features.shape} and returns {returns.shape} for "
                f"T={t_len} dates, N={n} factors, F={f} features (expected (T, N, F) and (T, N))."
            )
        for arr in (dates, features, returns):
            arr.setflags(write=False)
        fp = panel_fingerprint(dates, factors, feature_names, features, returns)
        return cls(dates, factors, feature_names, features, returns, fp)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(T, N, F)."""
        return self.features.shape


def panel_fingerprint(dates, factors, feature_names, features, returns) -> str:
    """sha256 hex digest of the panel content (little-endian bytes, names joined by U+001F)."""
    h = hashlib.sha256(b"xlstm-portfolio-panel-v1\0")
    h.update(np.ascontiguousarray(dates.astype("datetime64[D]").astype("<i8")).tobytes())
    h.update("\x1f".join(factors).encode() + b"\0")
    h.update("\x1f".join(feature_names).encode() + b"\0")
    h.update(np.ascontiguousarray(features, dtype="<f4").tobytes())
    h.update(np.ascontiguousarray(returns, dtype="<f8").tobytes())
    return h.hexdigest()


def file_sha256(path: str | Path) -> str:
    """sha256 hex digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _read_table(path: Path) -> pa.Table:
    if not path.exists():
        raise DataError(
            f"panel file {str(path)!r} does not exist. Build one with `python -m data.build_panel` "
            "or set data.panel_path: null for the embedded synthetic panel."
        )
    if not path.is_file():
        raise DataError(f"panel path {str(path)!r} is not a file.")
    try:
        pfile = pq.ParquetFile(path)
        names = pfile.schema_arrow.names
        dup = [c for i, c in enumerate(names) if c in names[:i]]
        if dup:  # checked on the schema: the reader itself chokes on duplicate names
            raise DataError(f"panel file {str(path)!r}: column {dup[0]!r} appears twice; column names must be unique.")
        return pfile.read()
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"panel file {str(path)!r} is not a readable Parquet file ({exc}).") from None


def _check_columns(table: pa.Table, path: Path, data_cfg: DataConfig | None) -> list[str]:
    """Return the feature column names; refuse empty files and missing / extra / duplicate columns."""
    names = table.column_names
    if table.num_rows == 0:
        raise DataError(f"panel file {str(path)!r} is empty (0 rows, columns {names}); rebuild it.")
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        raise DataError(
            f"panel file {str(path)!r} is missing column(s) {missing}; the contract needs "
            f"'date', 'factor', 'ret' plus the feature columns (found {names})."
        )
    feature_cols = [c for c in names if c not in REQUIRED_COLUMNS]
    if data_cfg is not None and len(feature_cols) != data_cfg.num_features:
        raise DataError(
            f"panel file {str(path)!r} has {len(feature_cols)} feature columns {feature_cols} (every column "
            f"except date, factor, ret) but data.num_features = {data_cfg.num_features}. "
            f"{'Drop the extra' if len(feature_cols) > data_cfg.num_features else 'Add the missing'} "
            "columns or set data.num_features to match."
        )
    if not feature_cols:
        raise DataError(f"panel file {str(path)!r} has no feature columns besides date, factor, ret.")
    return feature_cols


def read_panel(path: str | Path, data_cfg: DataConfig | None = None) -> Panel:
    """Read and validate a Parquet factor panel.

    Parameters
    ----------
    path : str or Path
        Parquet file following the data contract (module docstring).
    data_cfg : DataConfig, optional
        When given, also checks ``num_factors``, ``num_features`` and that there are enough dates
        for ``lookback_days + prediction_horizon`` and three non-empty purged splits.  None checks
        the contract only.

    Returns
    -------
    Panel
        features (T, N, F) float32, returns (T, N) float64.

    Raises
    ------
    DataError
        Naming the problem, the column, the first bad date or factor, and the fix.
    """
    path = Path(path)
    table = _read_table(path)
    feature_cols = _check_columns(table, path, data_cfg)
    dates = contract.parse_dates(table.column("date"))  # (R,) datetime64[D]
    codes, factors = contract.factor_codes(table.column("factor"), dates)  # (R,), (N,)
    contract.check_date_order(dates)
    numeric = {c: contract.numeric_column(table.column(c), c, dates, factors, codes) for c in ["ret", *feature_cols]}
    for name, values in numeric.items():
        contract.check_finite(values, name, dates, factors, codes)
    day_codes, unique_dates = contract.date_codes(dates)  # (R,), (T,)
    order = contract.cell_order(day_codes, codes, unique_dates, factors)  # (R,) cell of each row
    t_len, n = len(unique_dates), len(factors)
    features = np.empty((t_len * n, len(feature_cols)), dtype=np.float32)  # (T*N, F)
    for k, c in enumerate(feature_cols):
        features[order, k] = numeric[c]
    returns = np.empty(t_len * n, dtype=np.float64)  # (T*N,)
    returns[order] = numeric["ret"]
    contract.check_return_units(returns.reshape(t_len, n), unique_dates, factors)
    if data_cfg is not None:
        contract.check_sizes(n, t_len, data_cfg, path)
    return Panel.from_arrays(
        unique_dates, factors, feature_cols, features.reshape(t_len, n, -1), returns.reshape(t_len, n)
    )


def write_panel(df: pd.DataFrame, path: str | Path, *, overwrite: bool = False) -> str:
    """Write a long panel DataFrame to Parquet atomically (:func:`core.files.atomic_path`).

    Parameters
    ----------
    df : DataFrame
        Long panel with columns ``date``, ``factor``, ``ret`` and the features (see the contract).
    path : str or Path
        Destination.  Parent folders are created.
    overwrite : bool
        Replace an existing file.  False refuses (a panel is never replaced silently).

    Returns
    -------
    str
        sha256 hex digest of the written file's bytes.
    """
    path = Path(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"write_panel: the DataFrame lacks column(s) {missing}; the contract needs date, factor, ret.")
    if path.exists() and not overwrite:
        raise DataError(f"{str(path)!r} exists; pass --force (overwrite=True) to replace it.")
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(df, preserve_index=False)
    # Drop pandas' schema metadata: it carries library versions, and the bytes should depend on
    # the data only (the synthetic cache compares them).
    table = table.replace_schema_metadata(None)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
        digest = file_sha256(tmp)
    return digest
