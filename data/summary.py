"""``python -m data.summary --config CONFIG [--data PANEL]``: what the trainer will see.

Loads and validates the panel exactly as training does (:func:`data.windows.prepare`) and prints
its date range, shape, splits (decision and label date ranges) and fingerprint.
"""

from __future__ import annotations

import sys

from data.windows import PreparedData, prepare
from core.cli import config_parser, run_cli
from core.config import load_config


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


def summarise(config: str, data: str | None, overrides: list[str]) -> None:
    """Load and validate the panel as training does, then print its summary."""
    cfg = load_config(config, overrides)
    prep = prepare(cfg, data)
    print(summary_text(prep, data or cfg.data.panel_path or "embedded synthetic panel"))


def main(argv: list[str] | None = None) -> int:
    args = config_parser("python -m data.summary", "Validate the factor panel and print its summary.").parse_args(argv)
    return run_cli(lambda: summarise(args.config, args.data, args.set))


if __name__ == "__main__":
    sys.exit(main())
