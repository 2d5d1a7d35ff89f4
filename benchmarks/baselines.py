"""The backtest baselines' cost next to the ensemble's own backtest, measured side by side in one run.

    python -m benchmarks.baselines --rebalances 187 --seeds 5 [--config configs/model_config_cpu_demo.yaml]

On the synthetic panel's daily returns (104 factors, ``data.synthetic.simulate``) it times, at K
rebalances 5 days apart: each baseline of :mod:`data.baselines` (the fast path where there is one,
and skfolio's stock estimator, the reference, on the first ``--reference`` dates; each warmed up on
one date first), and the ensemble's part of
a backtest (``Ensemble.weights`` + ``member_weights``: S untrained members of the config, which cost
what trained ones do, on K random decision windows).  Prints seconds per rebalance and the totals
as a ratio of the ensemble's time.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from core.config import load_config
from data.baselines import ESTIMATION_DAYS, baseline_weights, baselines_for, skfolio_weights
from data.synthetic import simulate
from model.network import XLSTMPortfolio
from model.spec import ModelSpec
from ray_jobs.ensemble_model import Ensemble


def ensemble_seconds(cfg, seeds: int, k: int) -> float:
    """Seconds of Ensemble.weights + member_weights over k random windows (the backtest's model part)."""
    members = {}
    for s in range(seeds):
        torch.manual_seed(s)
        members[s] = XLSTMPortfolio(ModelSpec.of(cfg).for_device("cpu"), device="cpu").eval()
    ens = Ensemble(members, cfg, {}, "", torch.device("cpu"))
    d = cfg.data
    x = torch.randn(k, d.lookback_days, d.num_factors, d.num_features)
    start = time.perf_counter()
    ens.weights(x)
    ens.member_weights(x)
    return time.perf_counter() - start


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="configs/model_config_cpu_demo.yaml")
    p.add_argument("--rebalances", type=int, default=187)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--reference", type=int, default=10, help="dates the skfolio reference is timed on")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    cfg = load_config(args.config)
    pf, n, k = cfg.portfolio, cfg.data.num_factors, args.rebalances
    returns, _ = simulate(n, ESTIMATION_DAYS + 5 * k + 10)
    idx = ESTIMATION_DAYS - 1 + 5 * np.arange(k)
    ens = ensemble_seconds(cfg, args.seeds, k)
    print(f"n = {n}, K = {k} rebalances, {pf.constraint}, max_weight {pf.max_weight}; "
          f"ensemble ({args.seeds} members) backtest: {ens:.2f} s ({ens / k * 1e3:.1f} ms / rebalance)")
    total = 0.0
    print(f"{'baseline':22s} {'fast ms/reb':>11s} {'skfolio ms/reb':>14s} {'fast total / ensemble':>22s}")
    for name in baselines_for(pf):
        baseline_weights(name, returns, idx[:1], pf)  # warm: imports, first compile
        skfolio_weights(name, returns, idx[:1], pf)
        start = time.perf_counter()
        baseline_weights(name, returns, idx, pf)
        fast = time.perf_counter() - start
        total += fast
        ref_idx = idx[: args.reference]
        start = time.perf_counter()
        skfolio_weights(name, returns, ref_idx, pf)
        ref = (time.perf_counter() - start) / len(ref_idx)
        print(f"{name:22s} {fast / k * 1e3:11.1f} {ref * 1e3:14.1f} {fast / ens:22.3f}")
    print(f"{'all baselines':22s} {total / k * 1e3:11.1f} {'':14s} {total / ens:22.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
