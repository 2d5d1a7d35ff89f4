"""The out-of-sample backtest of a walk-forward run: the folds' weights joined into one series.

Each fold's ensemble (its seeds' ``best.pt``) decides at the fold's rebalances, chained from 1/N
within the fold (a fold's members know nothing of the previous fold's holdings); the joined
series is then scored as one policy by :func:`data.scoring.score_weights`, every rebalance
trading from the weights actually held before it, so the cost of switching folds is charged.
The baselines are the backtest's (:func:`ray_jobs.backtest.baseline_policies`) on the same
rebalances.  Writes ``metrics.csv``, ``folds.csv``, ``report.md`` and the PNGs of
:mod:`ray_jobs.report_plots` to ``<run>/report``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from core.files import write_text_atomic
from core.storage import StoragePath, as_path
from data import horizon_returns
from data.figures import BENCHMARK, figures_table
from data.folds import FoldPlan
from data.scoring import score_weights
from ray_jobs.analyze import to_markdown
from ray_jobs.backtest import baseline_policies, chained_prev
from ray_jobs.inference import EnsembleInputs
from ray_jobs.report_plots import plot_report


@dataclass
class FoldOutputs:
    """One fold's decisions on its trading span."""

    rebalances: np.ndarray  # (K_j,) decision indices
    ensemble: np.ndarray  # (K_j, N) the ensemble's weights
    members: dict[int, np.ndarray]  # seed -> (K_j, N) that member's own chained weights
    ic: np.ndarray  # (K_j,) rank IC of the members' mean expected return with the realised horizon return


def fold_outputs(fold_dir: StoragePath, rebalances: np.ndarray, panel_path, device: str) -> tuple[FoldOutputs, EnsembleInputs]:
    inputs = EnsembleInputs.load(None, panel_path, device, runs=[fold_dir])
    ens = inputs.ensemble
    x = inputs.windows(rebalances)  # (K_j, L, N, F), dates <= each decision only
    members = {s: w.cpu().numpy() for s, w in ens.member_weights(x).items()}
    if ens.cfg.ensemble.combine == "weights":
        weights = np.mean(list(members.values()), axis=0)  # the rule of Ensemble.weights, without re-solving
    else:
        weights = ens.weights(x).cpu().numpy()
    mu = np.mean([m[0].cpu().numpy() for m in ens.member_moments(x).values()], axis=0)  # (K_j, N)
    realised = horizon_returns(inputs.panel.returns, inputs.horizon)[rebalances]  # (K_j, N)
    ic = np.array([spearmanr(mu[k], realised[k]).statistic for k in range(len(rebalances))])
    return FoldOutputs(np.asarray(rebalances), weights, members, ic), inputs


def _join(outputs: list[FoldOutputs], seeds) -> dict[str, np.ndarray]:
    policies = {"ensemble": np.vstack([o.ensemble for o in outputs])}
    for seed in seeds:
        policies[f"seed {seed}"] = np.vstack([o.members[seed] for o in outputs])
    return policies


def members_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Rows ``members mean`` and ``members std`` (ddof=1) over the ``seed <s>`` rows."""
    seeds = table[table["policy"].str.startswith("seed ")].drop(columns="policy")
    summary = pd.DataFrame([seeds.mean(), seeds.std(ddof=1)])
    summary.insert(0, "policy", ["members mean", "members std"])
    return summary


def fold_table(plan: FoldPlan, outputs: list[FoldOutputs], results: dict, dates) -> pd.DataFrame:
    rows, start = [], 0
    for j, (fold, out) in enumerate(zip(plan.folds, outputs)):
        part = slice(start, start + len(out.rebalances))
        start = part.stop
        sharpe = {name: _slice_sharpe(res, part) for name, res in results.items()}
        members = [v for k, v in sharpe.items() if k.startswith("seed ")]
        rows.append({
            "fold": j, "train_end": str(dates[fold.train[-1]]), "val_end": str(dates[fold.val[-1]]),
            "trade_start": str(dates[fold.test[0]]), "trade_end": str(dates[fold.test[-1]]),
            "rebalances": len(out.rebalances), "ensemble_sharpe": sharpe["ensemble"],
            "members_sharpe_mean": float(np.mean(members)), "members_sharpe_std": float(np.std(members, ddof=1)) if len(members) > 1 else 0.0,
            "1/N_sharpe": sharpe[BENCHMARK], "ic_mean": float(np.nanmean(out.ic)),
        })
    return pd.DataFrame(rows)


def _slice_sharpe(result, part: slice) -> float:
    from data.scoring import annualised_sharpe

    return annualised_sharpe(result.net[part], result.horizon)


def evaluate(experiment_dir: StoragePath, plan: FoldPlan, panel_path, device: str = "cpu", baselines=None):
    """(results per policy, per-policy table, per-fold table, inputs of fold 0, oos rebalances)."""
    outputs, first = [], None
    for j in range(len(plan)):
        out, inputs = fold_outputs(as_path(experiment_dir) / f"fold_{j}", plan.rebalances(j), panel_path, device)
        outputs.append(out)
        first = first or inputs
    idx = np.concatenate([o.rebalances for o in outputs])  # == plan.oos[::horizon]
    seeds = sorted(set.intersection(*(set(o.members) for o in outputs)))
    policies = _join(outputs, seeds)
    policies.update(baseline_policies(first, idx, panel_path, only=baselines))
    cfg, h = first.ensemble.cfg, first.horizon
    r_h = horizon_returns(first.panel.returns, h)[idx]  # (K, N)
    results = {k: score_weights(idx, w, chained_prev(w), r_h, cfg.portfolio.tc_rate, h) for k, w in policies.items()}
    table = figures_table(results)
    folds = fold_table(plan, outputs, results, first.panel.dates)
    return results, table, folds, first, idx


def walk_forward_report(experiment_dir: StoragePath, plan: FoldPlan, panel_path, device: str = "cpu",
                        baselines=None) -> StoragePath:
    """Evaluate (``baselines``: names of :data:`ray_jobs.backtest.BASELINE_POLICIES`, None for all)
    and write the report; returns the path of ``report.md``."""
    results, table, folds, inputs, idx = evaluate(experiment_dir, plan, panel_path, device, baselines)
    out = as_path(experiment_dir) / "report"
    full = pd.concat([table, members_summary(table)], ignore_index=True)
    write_text_atomic(out / "metrics.csv", full.to_csv(index=False))
    write_text_atomic(out / "folds.csv", folds.to_csv(index=False))
    dates = inputs.panel.dates[idx]
    plots = plot_report(results, dates, list(inputs.panel.factors), out)
    print(full[["policy", "sharpe", "sharpe_se", "sharpe_vs_1n", "p_value_vs_1n", "max_drawdown", "turnover"]]
          .to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return write_markdown(out, full, folds, inputs, idx, plots)


def _members_row(table: pd.DataFrame) -> pd.DataFrame:
    """The members as ``mean ± std`` strings beside the ensemble (for the Markdown only)."""
    mean, std = table[table.policy == "members mean"].iloc[0], table[table.policy == "members std"].iloc[0]
    row = {c: (f"{mean[c]:.3f} ± {std[c]:.3f}" if c != "policy" else "members (mean ± std)") for c in table.columns}
    return pd.DataFrame([row])


def write_markdown(out: StoragePath, table: pd.DataFrame, folds: pd.DataFrame, inputs, idx, plots: list[str]) -> StoragePath:
    pf, h = inputs.ensemble.cfg.portfolio, inputs.horizon
    dates = inputs.panel.dates[idx]
    policies = table[~table.policy.str.startswith("members ")]
    shown = pd.concat([policies[~policies.policy.str.startswith("seed ")].round(4).astype(object), _members_row(table)])
    text = [
        f"# Walk-forward backtest of {out.parent.name}\n",
        f"Out-of-sample {dates[0]} .. {dates[-1]}: {len(idx)} rebalances every {h} days over {len(folds)} folds; "
        f"cost {pf.tc_rate} per unit traded. Definitions of every column: docs/evaluation.md.\n",
        "## Policies\n", to_markdown(shown), "",
        "`sharpe_vs_1n`, `p_value_vs_1n`: the Sharpe difference to 1/N and its two-sided p-value (Ledoit-Wolf "
        "2008, HAC). `break_even_cost`: the cost per unit traded at which the policy's net Sharpe falls to "
        "1/N's. `sharpe_<c>bp`: net Sharpe with the same weights charged c basis points per unit traded.\n",
        "## Folds\n", to_markdown(folds.round(4)), "",
        *[f"![{name.rsplit('.', 1)[0]}]({name})\n" for name in plots],
    ]
    return write_text_atomic(out / "report.md", "\n".join(text))
