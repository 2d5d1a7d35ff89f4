"""A real-data panel anyone can rebuild offline: 20 US stocks, 1990-2022, from skfolio's bundled prices.

``python -m data.sp500 --out PANEL.parquet [--force]``

``skfolio.datasets.load_sp500_dataset()`` ships daily adjusted prices of 20 S&P 500 stocks
(1990-01-02 .. 2022-12-28) inside the package, so no network is needed.  The prices become daily
simple returns (``pct_change``, first date dropped), then the panel of the data contract through
:func:`data.build_panel.compute_features` (which drops the first ``WARMUP_DAYS`` dates) and
:func:`data.panel.write_panel`.  Train on it with ``configs/model_config_cpu_sp500.yaml`` and
``--data PANEL.parquet``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pandas as pd

from core.cli import CliParser, run_cli
from core.errors import DataError


def sp500_prices() -> pd.DataFrame:
    """skfolio's bundled daily prices: DataFrame (T_in, 20), DatetimeIndex, one column per ticker."""
    from skfolio.datasets import load_sp500_dataset

    return load_sp500_dataset()


def sp500_returns(prices: pd.DataFrame | None = None) -> pd.DataFrame:
    """Daily simple returns ``p[t] / p[t-1] - 1`` of the prices; (T_in - 1, N), first date dropped.

    Parameters
    ----------
    prices : DataFrame, (T_in, N), optional
        Daily prices; default :func:`sp500_prices`.
    """
    prices = sp500_prices() if prices is None else prices
    returns = prices.pct_change(fill_method=None).iloc[1:]
    returns.index = pd.DatetimeIndex(returns.index)
    returns.columns = [str(c) for c in returns.columns]
    return returns


def build_sp500_panel(out: str | Path, force: bool = False):
    """Write the S&P 500 panel to ``out`` and return it as read back by :func:`data.read_panel`.

    Raises
    ------
    DataError
        ``out`` exists and ``force`` is False (checked before any work), or the data break the
        panel contract.
    """
    from data.build_panel import compute_features
    from data.panel import read_panel, write_panel

    out = Path(out)
    if out.exists() and not force:
        raise DataError(f"{out} exists; pass --force to replace it, or choose another --out.")
    returns = sp500_returns()
    long = compute_features(returns)
    write_panel(long, out, overwrite=force)
    return read_panel(out)


def main(argv: list[str] | None = None) -> int:
    parser = CliParser(
        prog="python -m data.sp500",
        description="Build a factor panel (Parquet) of 20 US stocks, 1990-2022, from skfolio's bundled "
        "daily prices (offline).",
    )
    parser.add_argument("--out", required=True, help="panel Parquet file to write")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    args = parser.parse_args(argv)

    def action() -> None:
        start = time.perf_counter()
        panel = build_sp500_panel(args.out, args.force)
        print(
            f"wrote {args.out}: {len(panel.dates)} dates ({panel.dates[0]} .. {panel.dates[-1]}) x "
            f"{len(panel.factors)} stocks x {len(panel.feature_names)} features, fingerprint "
            f"{panel.fingerprint[:16]} ({time.perf_counter() - start:.1f} s)"
        )

    return run_cli(action)


if __name__ == "__main__":
    sys.exit(main())
