"""``python -m data.summary --config CONFIG [--data PANEL]``: what the trainer will see.

Loads and validates the panel exactly as training does (:func:`data.windows.prepare`) and prints
its date range, shape, splits (decision and label date ranges) and fingerprint.
"""

from __future__ import annotations

import argparse
import sys

from data.windows import PreparedData, prepare
from model.config import load_config
from model.errors import PortfolioTrainerError


def summary_text(prep: PreparedData, source: str) -> str:
    """Human-readable summary of a prepared panel."""
    p, d = prep.panel, prep.data_cfg
    t_len, n, f = p.shape
    h = d.prediction_horizon
    lines = [
        f"source       {source}",
        f"dates        {p.dates[0]} .. {p.dates[-1]}  (T = {t_len})",
        f"factors      N = {n}  ({', '.join(p.factors[:4])}{', ...' if n > 4 else ''})",
        f"features     F = {f}  ({', '.join(p.feature_names)})",
        f"windows      lookback {d.lookback_days}, horizon {h}, purge {prep.splits.val[0] - prep.splits.train[-1] - 1}",
    ]
    for name, idx in prep.splits.items():
        lines.append(
            f"{name:12s} {len(idx):5d} decisions  {p.dates[idx[0]]} .. {p.dates[idx[-1]]}"
            f"  (labels to {p.dates[idx[-1] + h]})"
        )
    lines.append(f"normalizer   fitted on dates {p.dates[0]} .. {p.dates[prep.normalizer.fit_end]}")
    lines.append(f"fingerprint  {p.fingerprint}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m data.summary", description="Validate the factor panel and print its summary."
    )
    parser.add_argument("--config", required=True, help="YAML config (configs/*.yaml)")
    parser.add_argument("--data", default=None, help="panel Parquet (default: data.panel_path, else synthetic)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.set)
        prep = prepare(cfg, args.data)
    except PortfolioTrainerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    source = args.data or cfg.data.panel_path or "embedded synthetic panel"
    print(summary_text(prep, source))
    return 0


if __name__ == "__main__":
    sys.exit(main())
