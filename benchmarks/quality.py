"""Model-quality benchmark: train an ensemble through the real path, score it against references.

  python -m benchmarks.quality --config configs/model_config_cpu_demo.yaml [--seeds 42 123]
      [--storage runs/quality] [--out FILE.md] [--set KEY=VALUE ...]

Trains (or finishes, or reuses a finished) ensemble with ``ray_jobs.ensemble`` on the embedded
synthetic panel, then prints and writes (Markdown, ``--out``, default
``STORAGE/NAME/quality.md``), for the val and the test split:

* the annualised net Sharpe ratio, its standard error (Lo 2002) and the one-way turnover of the
  oracle (true moments), the past-only linear probe, 1/N, minimum variance, sample mean-variance,
  each seed, the seed mean +- standard deviation and the ensemble;
* the return head's information coefficient (IC): the mean over rebalance dates of the rank
  correlation of ``mu`` with the realised horizon returns, per seed, for the ensemble's mean mu
  and for the probe;
* how much of the planted signal each of them ranks: the mean rank correlation of ``mu`` with the
  synthetic truth's signal s (all of it, and the moving parts), free of the returns' noise;
* health per seed: the median gradient norm (before clipping) of every epoch, the val Sharpe of
  every epoch, and the train/val loss gap at the best epoch.

Choose on val; the test columns are for the final report (docs/quality.md), not for tuning.
"""

from __future__ import annotations

import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from data.scoring import sharpe_standard_error
from core.config import load_config
from core.errors import ConfigError
from core.cli import CliParser, run_cli
from ray_jobs.demo import train_or_finish

SPLITS = ("val", "test")


def mean_ic(mu: np.ndarray, r_horizon: np.ndarray) -> float:
    """Mean over dates of the Spearman correlation of mu (K, N) with realised returns (K, N)."""
    values = [spearmanr(m, r).statistic for m, r in zip(np.asarray(mu), np.asarray(r_horizon))]
    return float(np.nanmean(values))


def model_rows(inputs, split: str, signal: np.ndarray | None = None) -> tuple[dict, dict, dict]:
    """Scored policies, ICs and, with the planted ``signal`` (T, N), the rank correlation of mu with
    it (``benchmarks.ic_parts.recovery``) of the members and the ensemble on a split's rebalances."""
    from benchmarks.ic_parts import recovery
    from data import horizon_returns
    from ray_jobs.backtest import chained_prev
    from data.scoring import score_weights

    ens, h = inputs.ensemble, inputs.horizon
    idx = inputs.split_rebalances(split)
    r_h = horizon_returns(inputs.panel.returns, h)[idx]  # (K, N)
    x = inputs.windows(idx)  # (K, L, N, F)
    moments = ens.member_moments(x)
    rows, ics, recov, tc = {}, {}, {}, ens.cfg.portfolio.tc_rate
    members = {seed: w.cpu().numpy() for seed, w in ens.member_weights(x).items()}  # solved once
    for seed, w in members.items():
        rows[f"seed {seed}"] = score_weights(idx, w, chained_prev(w), r_h, tc, h)
        ics[f"seed {seed}"] = mean_ic(moments[seed][0].cpu().numpy(), r_h)
        if signal is not None:
            recov[f"seed {seed}"] = recovery(moments[seed][0].cpu().numpy(), signal[idx])
    combined = {"weights": np.mean(list(members.values()), axis=0),  # as Ensemble.weights(rule="weights")
                "moments": ens.weights(x, rule="moments").cpu().numpy()}
    for rule, w in combined.items():
        name = "ensemble" if rule == ens.cfg.ensemble.combine else f"ensemble, mean of {rule}"
        rows[name] = score_weights(idx, w, chained_prev(w), r_h, tc, h)
    mean_mu = ens.combine(moments)[0].cpu().numpy()
    ics["ensemble (mean mu)"] = mean_ic(mean_mu, r_h)
    if signal is not None:
        recov["ensemble (mean mu)"] = recovery(mean_mu, signal[idx])
    return rows, ics, recov


def baseline_rows(inputs, split: str) -> dict:
    """Minimum variance and sample mean-variance (ray_jobs.backtest's baselines) on a split."""
    from data import horizon_returns
    from data.baselines import baseline_weights
    from ray_jobs.backtest import chained_prev
    from data.scoring import score_weights

    cfg, h = inputs.ensemble.cfg, inputs.horizon
    idx = inputs.split_rebalances(split)
    returns = inputs.panel.returns
    r_h = horizon_returns(returns, h)[idx]
    out = {}
    for name in ("min variance", "sample mean-variance"):
        w = baseline_weights(name, returns, idx, cfg.portfolio)
        out[name] = score_weights(idx, w, chained_prev(w), r_h, cfg.portfolio.tc_rate, h)
    return out


def reference_rows(cfg) -> tuple[dict, dict]:
    """Oracle / probe / 1/N Sharpe per split (data.oracle) and the probe's IC per split."""
    from data.oracle import policy_table, probe_ic

    table = policy_table(cfg, splits=SPLITS)
    return table, probe_ic(cfg)


def health(experiment: Path) -> dict[int, dict]:
    """Per seed: median gradient norm and val Sharpe per epoch, loss gap at the best epoch."""
    from ray_jobs.run_folder import SEEDS_DIR
    from ray_jobs.run_folder import read_history

    out = {}
    for run_dir in sorted((experiment / SEEDS_DIR).glob("seed_*")):
        rows = read_history(run_dir)
        if not rows:
            continue
        best = max(rows, key=lambda r: r["val_sharpe"])
        out[int(run_dir.name.split("_", 1)[1])] = {
            "grad": [r.get("gradient_norm_median", r["gradient_norm"]) for r in rows],
            "val_sharpe": [r["val_sharpe"] for r in rows],
            "best_epoch": best["epoch"],
            "loss_gap": best["val_loss"] - best["loss"],
        }
    return out


def _fmt_row(name: str, cells: list[str]) -> str:
    return "| " + " | ".join([name, *cells]) + " |"


def sharpe_table(scores: dict[str, dict], combine: str) -> list[str]:
    """Markdown rows: policy | val Sharpe +- SE | val turnover | test Sharpe +- SE | test turnover.

    ``scores[split][policy] = (sharpe, se, turnover)``.
    """
    lines = ["| policy | " + " | ".join(f"{s} Sharpe ± SE | {s} turnover" for s in SPLITS) + " |",
             "|---|" + "---:|" * (2 * len(SPLITS))]
    names = list(scores[SPLITS[0]])
    for name in names:
        cells = []
        for split in SPLITS:
            sharpe, se, turn = scores[split][name]
            cells += [f"{sharpe:+.2f} ± {se:.2f}" if se == se else f"{sharpe:+.2f}",
                      "" if turn != turn else f"{turn:.3f}"]
        lines.append(_fmt_row(f"**{name}** ({combine})" if name == "ensemble" else name, cells))
    return lines


def collect(experiment: Path, cfg) -> tuple[dict, dict, dict, dict]:
    """Sharpe (sharpe, se, turnover), IC and recovery of the planted signal per split and policy,
    and the health figures."""
    from benchmarks.ic_parts import recovery, synthetic_truth
    from data import horizon_returns, prepare
    from data.oracle import probe_means
    from ray_jobs.inference import EnsembleInputs

    inputs = EnsembleInputs.load(experiment, None, "cpu")
    table, probe_ics = reference_rows(inputs.ensemble.cfg)
    signal = synthetic_truth(inputs.ensemble.cfg, inputs.panel.dates).signal  # (T, N)
    prep = prepare(inputs.ensemble.cfg)
    probe_mu = probe_means(prep, horizon_returns(prep.panel.returns, inputs.horizon))  # (T, N)
    label = {"oracle": "oracle", "probe": "probe", "equal": "1/N"}
    scores, ics, recov = {}, {}, {}
    for split in SPLITS:
        row = {}
        for key in ("oracle", "probe", "equal"):
            if key in table[split]:
                res = table[split][key]
                row[label[key]] = (res.sharpe, sharpe_standard_error(res.net, res.horizon), res.mean_turnover)
        for name, res in baseline_rows(inputs, split).items():
            row[name] = (res.sharpe, sharpe_standard_error(res.net, res.horizon), res.mean_turnover)
        members, split_ics, split_recov = model_rows(inputs, split, signal)
        seed_sharpes = [res.sharpe for name, res in members.items() if name.startswith("seed")]
        for name, res in members.items():
            if not name.startswith("seed") and "seed mean ± sd" not in row:
                row["seed mean ± sd"] = (float(np.mean(seed_sharpes)), float(np.std(seed_sharpes, ddof=1))
                                         if len(seed_sharpes) > 1 else float("nan"), float("nan"))
            row[name] = (res.sharpe, sharpe_standard_error(res.net, res.horizon), res.mean_turnover)
        scores[split] = row
        split_ics["probe"] = probe_ics[split]
        ics[split] = split_ics
        idx = inputs.split_rebalances(split)
        split_recov["probe"] = recovery(probe_mu[idx], signal[idx])
        recov[split] = split_recov
    return scores, ics, recov, health(experiment)


def report(config: str, experiment: Path, cfg, scores: dict, ics: dict, recov: dict, fitness: dict,
           minutes: float) -> str:
    """The benchmark's Markdown (also printed)."""
    lines = [f"# Quality benchmark: `{Path(config).name}`", "",
             f"Experiment `{experiment}`; seeds {list(cfg.ensemble.seeds)}; synthetic panel; "
             f"{platform.machine()} / {torch.get_num_threads()} torch threads; wall time {minutes:.1f} min "
             "(training included unless it had finished before).", "",
             "## Net Sharpe ratio (annualised, after costs; SE: Lo 2002, iid)", "", *sharpe_table(scores, f"mean of {cfg.ensemble.combine}, the config's rule"), "",
             "The seed-mean row's ± is the standard deviation over seeds, not a standard error.", "",
             "## Return-head information coefficient (mean over rebalance dates of rank corr(mu, realised))", "",
             "| model | " + " | ".join(SPLITS) + " |", "|---|" + "---:|" * len(SPLITS)]
    for name in ics[SPLITS[0]]:
        lines.append(_fmt_row(name, [f"{ics[s][name]:+.4f}" for s in SPLITS]))
    lines += ["", "## How much of the planted signal mu ranks (mean over rebalance dates of rank corr(mu, s))", "",
              "The synthetic truth, without the realised returns' noise (`benchmarks.ic_parts.recovery`): all of mu, "
              "and the moving parts (each less its factor's mean over the split).", "",
              "| model | " + " | ".join(f"{s} | {s}, moving" for s in SPLITS) + " |",
              "|---|" + "---:|" * (2 * len(SPLITS))]
    for name in recov[SPLITS[0]]:
        lines.append(_fmt_row(name, [f"{recov[s][name][k]:+.3f}" for s in SPLITS for k in ("all", "moving")]))
    lines += ["", "## Health per seed", "",
              "| seed | median gradient norm per epoch (before clipping) | val Sharpe per epoch | best epoch | "
              "val loss - train loss at best |", "|---|---|---|---:|---:|"]
    for seed, h in fitness.items():
        lines.append(_fmt_row(str(seed), [" ".join(f"{g:.2f}" for g in h["grad"]),
                                          " ".join(f"{v:+.2f}" for v in h["val_sharpe"]),
                                          str(h["best_epoch"]), f"{h['loss_gap']:+.3f}"]))
    lines += ["", "## Targets (issue 12)", "", *targets(scores, ics, fitness)]
    return "\n".join(lines) + "\n"


def targets(scores: dict, ics: dict, fitness: dict) -> list[str]:
    """One line per target of the demo config, met or not."""
    out = []

    def line(ok: bool, text: str) -> None:
        out.append(f"- {'met' if ok else 'NOT met'}: {text}")

    for split in SPLITS:
        row = scores[split]
        ens, probe, equal = row["ensemble"][0], row["probe"][0], row["1/N"][0]
        line(ens >= probe, f"{split}: ensemble Sharpe {ens:+.2f} >= probe {probe:+.2f}")
        mean = row["seed mean ± sd"][0]
        line(mean >= equal + 0.3, f"{split}: seed mean {mean:+.2f} >= 1/N + 0.3 = {equal + 0.3:+.2f}")
        ic, probe_ic = ics[split]["ensemble (mean mu)"], ics[split]["probe"]
        line(ic > probe_ic, f"{split}: return-head IC {ic:+.4f} > probe's {probe_ic:+.4f}")
    worst = max((max(h["grad"][1:]) for h in fitness.values() if len(h["grad"]) > 1), default=float("nan"))
    line(worst < 10, f"median gradient norm before clipping from epoch 2 on: at most {worst:.2f} (< 10)")
    return out


def run(args) -> Path:
    start = time.perf_counter()
    overrides = list(args.overrides)
    if args.seeds:
        overrides.append("ensemble.seeds=[" + ",".join(str(s) for s in args.seeds) + "]")
    cfg = load_config(args.config, overrides)
    if cfg.data.panel_path is not None:
        raise ConfigError(
            f"data.panel_path = {cfg.data.panel_path!r}: the quality benchmark needs the embedded synthetic panel "
            "(its oracle knows the truth); set data.panel_path: null, or use python -m ray_jobs.backtest."
        )
    storage = Path(args.storage).resolve()
    experiment = train_or_finish(args.config, storage, overrides)
    scores, ics, recov, fitness = collect(experiment, cfg)
    text = report(args.config, experiment, cfg, scores, ics, recov, fitness, (time.perf_counter() - start) / 60)
    out = Path(args.out) if args.out else experiment / "quality.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    print(f"written: {out}")
    return out


def main(argv=None) -> int:
    p = CliParser(prog="python -m benchmarks.quality", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="run config (YAML); the synthetic panel is used")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default: the config's)")
    p.add_argument("--storage", default="runs/quality", help="experiment storage root (default runs/quality)")
    p.add_argument("--out", default=None, help="Markdown output (default STORAGE/NAME/quality.md)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    return run_cli(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
