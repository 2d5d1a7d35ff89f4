"""What each split of the synthetic panel lets a features-based model show: the information
coefficient of the oracle, the probe and the planted signal, split into a fixed tilt and a moving
part, and how closely the probe's ranking tracks the planted signal.

  python -m benchmarks.ic_parts --config configs/model_config_mac_test.yaml

For each split's rebalance dates (every ``horizon`` decisions, as the scorer trades them):

- **IC**: the mean over dates of the Spearman correlation of a ranking with the realised horizon
  returns (``benchmarks.quality.mean_ic``, the figure every report prints);
- **tilt / moving**: the IC of each factor's mean ranking score over the split (a fixed tilt), and of
  the rest (the score less that mean: what changes from date to date);
- **recovery**: the mean Spearman correlation of the probe's expected returns with the planted
  signal s[t] itself, overall and for the moving parts.  It carries no return noise, so it measures
  how much of the signal the features reveal, apart from how the split's returns happened to fall.

Rows: the oracle (the true conditional mean), the planted signal s alone, and the probe of
``data.oracle`` (a ridge on the features at t, fitted on train).  The synthetic panel only: a panel
file has no truth.  docs/quality.md ("What the val split can show") reads this table.
"""

from __future__ import annotations

import sys

import numpy as np

from core.cli import CliParser, run_cli
from core.config import load_config
from core.errors import ConfigError


def ic_parts(mu: np.ndarray, realised: np.ndarray) -> dict[str, float]:
    """{"ic", "tilt", "moving"} of scores ``mu`` (K dates, N) against ``realised`` (K, N): the mean
    rank IC of mu, of each factor's mean over the K dates, and of mu less that mean."""
    from benchmarks.quality import mean_ic

    mu = np.asarray(mu, dtype=np.float64)
    tilt = np.broadcast_to(mu.mean(axis=0, keepdims=True), mu.shape).copy()  # (K, N)
    return {"ic": mean_ic(mu, realised), "tilt": mean_ic(tilt, realised), "moving": mean_ic(mu - tilt, realised)}


def recovery(mu: np.ndarray, signal: np.ndarray) -> dict[str, float]:
    """{"all", "moving"}: the mean over dates of the Spearman correlation of ``mu`` (K, N) with the
    planted ``signal`` (K, N), and of their parts less each factor's mean over the K dates."""
    from benchmarks.quality import mean_ic

    mu, signal = np.asarray(mu, dtype=np.float64), np.asarray(signal, dtype=np.float64)
    return {"all": mean_ic(mu, signal),
            "moving": mean_ic(mu - mu.mean(axis=0, keepdims=True), signal - signal.mean(axis=0, keepdims=True))}


def synthetic_truth(cfg, dates: np.ndarray):
    """The synthetic panel's :class:`data.synthetic.SyntheticTruth`, checked to describe ``dates``."""
    from data.synthetic import SEED, generate

    _, truth = generate(cfg.data.num_factors, cfg.data.synthetic_years, SEED)
    if not np.array_equal(truth.dates, dates):
        raise ConfigError("the regenerated synthetic truth does not match the cached panel's dates; delete the cache "
                          "folder (data.synthetic.cache_dir) and run again.")
    return truth


def table(config: str, overrides: list[str]) -> list[dict]:
    """One row per (split, ranking): its ``ic_parts`` and, for the probe, its ``recovery``."""
    from data import prepare
    from data.oracle import probe_means
    from data.splits import rebalance_indices
    from data.windows import horizon_returns

    cfg = load_config(config, overrides)
    if cfg.data.panel_path is not None:
        raise ConfigError(
            f"benchmarks.ic_parts needs the synthetic panel (its truth); data.panel_path = {cfg.data.panel_path!r}. "
            "Set data.panel_path=null."
        )
    prep = prepare(cfg)
    h = cfg.data.prediction_horizon
    r_horizon = horizon_returns(prep.panel.returns, h)  # (T, N)
    truth = synthetic_truth(cfg, prep.panel.dates)
    rankings = {"oracle": truth.moments(h)[0], "signal s": truth.signal, "probe": probe_means(prep, r_horizon)}
    rows = []
    for split, decisions in prep.splits.items():
        idx = np.asarray(rebalance_indices(decisions, h))
        for name, mu in rankings.items():
            row = {"split": split, "ranking": name, "dates": len(idx), **ic_parts(mu[idx], r_horizon[idx])}
            if name == "probe":
                row.update({f"recovery_{k}": v for k, v in recovery(mu[idx], truth.signal[idx]).items()})
            rows.append(row)
    return rows


def report(config: str, overrides: list[str]) -> None:
    print("| split | ranking | dates | IC | IC of the tilt | IC of the moving part | rank corr with s | moving parts' |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in table(config, overrides):
        rec = (f"{r['recovery_all']:+.3f} | {r['recovery_moving']:+.3f}" if "recovery_all" in r else " | ")
        print(f"| {r['split']} | {r['ranking']} | {r['dates']} | {r['ic']:+.4f} | {r['tilt']:+.4f} | "
              f"{r['moving']:+.4f} | {rec} |", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = CliParser(
        prog="python -m benchmarks.ic_parts",
        description="IC of the oracle, the planted signal and the probe on each split of the synthetic panel, "
                    "as a fixed tilt and a moving part (a panel file has no truth: no --data).",
    )
    parser.add_argument("--config", required=True, help="YAML config (configs/*.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    args = parser.parse_args(argv)
    return run_cli(lambda: report(args.config, args.set))


if __name__ == "__main__":
    sys.exit(main())
