"""Out-of-sample backtest of an ensemble on the test split, against classic baselines.

  python -m ray_jobs.backtest --experiment runs/ensembles/NAME --out runs/report
  python -m ray_jobs.backtest --runs models/ensemble/model_* --out runs/report   # train.py runs, one per seed

Rebalances every ``horizon`` days over the test split (non-overlapping holding periods), each
policy trading from its previous weights (1/N before the first rebalance), net of
``portfolio.tc_rate`` per unit traded, all under the training constraints.  Policies:

- the ensemble and each member;
- **probe**: the past-only linear probe of :mod:`data.oracle` (pooled ridge of the horizon return
  on the normalised features at t, fitted on the train split; a trailing-252-day one-factor risk
  model), solved with the training problem, cost term included (:func:`data.oracle.probe_weights`);
- **1/N**;
- **inverse volatility**: weights proportional to 1/sigma_i of the ``ESTIMATION_DAYS`` daily returns
  up to t (skfolio's ``InverseVolatility``); with ``long_only`` and ``max_weight``, clipped at
  max_weight and the rest renormalised, repeatedly (:func:`cap_weights`), so the weights are
  ``min(max_weight, c / sigma_i)`` with c such that they sum to 1;
- **min variance**, **sample mean-variance**, **risk parity** (equal risk contribution) and **HRP**:
  skfolio's ``MeanRisk``, ``RiskBudgeting`` and ``HierarchicalRiskParity`` on the ``ESTIMATION_DAYS``
  daily returns up to the decision date (no look-ahead), the covariance shrunk towards its diagonal,
  under the training constraints, optimised without the cost term (costs are charged all the same);
  risk parity and HRP only long-only (:mod:`data.baselines`).

Every row has the figures of :func:`data.figures.figures_table` (the walk-forward's too): Sharpe with
its standard error (Lo 2002), Sortino, Calmar, CVaR 95 %, the Sharpe difference to 1/N with its
p-value, the break-even cost and a cost sweep.  Writes ``report.md``, ``metrics.csv`` and ``equity.png``.
"""

from __future__ import annotations

import sys
from typing import Optional, Sequence

import numpy as np
import pandas as pd
from skfolio.exceptions import NonPositiveVarianceError
from skfolio.optimization import InverseVolatility

from core.cli import CliParser, run_cli
from core.errors import ConfigError, DataError, PortfolioTrainerError
from core.files import atomic_path, write_text_atomic
from core.storage import StoragePath, as_path
from data import horizon_returns
from data.baselines import ESTIMATION_DAYS, SHRINKAGE, baseline_weights, baselines_for, check_history
from data.oracle import probe_weights
from data.figures import figures_table
from data.scoring import score_weights
from data.windows import prepare
from portfolio.constraints import describe, infeasibility
from ray_jobs.analyze import to_markdown
from ray_jobs.inference import EnsembleInputs
from ray_jobs.members import add_member_arguments, members_label

def cap_weights(weights: np.ndarray, max_weight: float) -> np.ndarray:
    """Clip long-only weights at ``max_weight`` and renormalise the others, until none exceeds it.

    Gives ``min(max_weight, c * weights_i)`` with c > 0 such that the result sums to 1: the uncapped
    weights keep their ratios.  (Not the Euclidean projection onto the constraints.)

    Parameters
    ----------
    weights : np.ndarray, (N,)
        Positive weights (only their ratios matter).
    max_weight : float
        Upper bound per weight; needs N * max_weight >= 1.

    Returns
    -------
    np.ndarray, float64, (N,)
    """
    w = np.asarray(weights, dtype=np.float64)
    reason = infeasibility(True, max_weight, 1.0, len(w))
    if reason is not None:
        raise ConfigError(reason)
    capped = np.zeros(len(w), dtype=bool)
    out = np.empty_like(w)
    while True:  # each pass caps >= 1 more weight, so at most N + 1 passes
        free = ~capped
        out[capped] = max_weight
        if not free.any():
            return out
        out[free] = w[free] * (1 - max_weight * capped.sum()) / w[free].sum()
        over = free & (out > max_weight)
        if not over.any():
            return out
        capped |= over


def inverse_volatility_weights(returns: np.ndarray, indices: np.ndarray, cfg) -> np.ndarray:
    """Inverse-volatility weights at the decision indices (K,) from the daily returns (T, N).

    Each decision t uses the ``ESTIMATION_DAYS`` returns of dates t-E+1..t only (skfolio's
    ``InverseVolatility``: w_i proportional to 1 / sigma_i); with ``long_only`` and a
    ``max_weight``, :func:`cap_weights` enforces the bound.  Returns (K, N) float64.
    """
    check_history(indices)
    rows = []
    for t in indices:
        window = returns[int(t) - ESTIMATION_DAYS + 1: int(t) + 1]  # (E, N), dates <= t only
        try:
            w = np.asarray(InverseVolatility().fit(window).weights_, dtype=np.float64)
        except NonPositiveVarianceError as exc:
            raise DataError(
                f"inverse volatility at decision index {int(t)}: a factor's returns are constant over "
                f"the {ESTIMATION_DAYS} days up to it ({exc}); drop that factor from the panel."
            ) from None
        if cfg.constraint == "long_only" and cfg.max_weight is not None:
            w = cap_weights(w, cfg.max_weight)
        rows.append(w)
    return np.vstack(rows)


def chained_prev(weights: np.ndarray) -> np.ndarray:
    n = weights.shape[1]
    return np.vstack([np.full((1, n), 1.0 / n), weights[:-1]])


BASELINE_POLICIES = ("probe", "1/N", "inverse volatility", "min variance", "sample mean-variance", "risk parity", "HRP")


def baseline_policies(inputs: EnsembleInputs, idx: np.ndarray, data=None,
                      only: Optional[Sequence[str]] = None) -> dict[str, np.ndarray]:
    """Weights (K, N) of the probe, 1/N, inverse volatility, min variance, sample mean-variance and,
    long-only, risk parity and HRP (skfolio: :mod:`data.baselines`); ``only``: those of them (1/N,
    the benchmark of every comparison, always).

    The probe's ridge and normaliser come from ``data.prepare`` on the ensemble's config and the
    same panel (``data``, else the config's): fitted on that panel's train split.
    """
    cfg = inputs.ensemble.cfg
    pf, returns = cfg.portfolio, inputs.panel.returns
    wanted = set(BASELINE_POLICIES if only is None else [*only, "1/N"])
    unknown = wanted - set(BASELINE_POLICIES)
    if unknown:
        raise ConfigError(f"unknown baseline(s) {sorted(unknown)}; choose from {list(BASELINE_POLICIES)}.")
    policies = {}
    if "probe" in wanted:
        policies["probe"] = probe_weights(prepare(cfg, data), idx, pf)
    for name in baselines_for(pf):
        if name in wanted:
            policies[name] = baseline_weights(name, returns, idx, pf)
        if name == "1/N" and "inverse volatility" in wanted:
            policies["inverse volatility"] = inverse_volatility_weights(returns, idx, pf)
    return policies


def run_backtest(experiment: Optional[StoragePath], data=None, device: str = "cpu",
                 runs: Optional[Sequence[str]] = None) -> tuple[pd.DataFrame, dict, EnsembleInputs, np.ndarray]:
    """The test-split table; the members are a Tune ``experiment``'s seeds or ``train.py`` ``runs``."""
    inputs = EnsembleInputs.load(experiment, data, device, runs=runs)
    ens, h = inputs.ensemble, inputs.horizon
    cfg = ens.cfg.portfolio
    idx = inputs.split_rebalances("test")
    if len(idx) < 2:
        raise PortfolioTrainerError(f"the test split has {len(idx)} rebalance(s); a backtest needs >= 2.")
    returns = inputs.panel.returns
    r_h = horizon_returns(returns, h)[idx]  # (K, N) compounded t+1..t+h
    x = inputs.windows(idx)
    policies = {"ensemble": ens.weights(x).cpu().numpy()}
    policies.update({f"seed {s}": w.cpu().numpy() for s, w in ens.member_weights(x).items()})
    policies.update(baseline_policies(inputs, idx, data))
    results = {k: score_weights(idx, w, chained_prev(w), r_h, cfg.tc_rate, h) for k, w in policies.items()}
    table = figures_table(results)
    return table, results, inputs, idx


def plot_equity(results: dict, dates, path: StoragePath) -> None:
    # Deferred: selects the headless backend before pyplot loads, only when a figure is drawn
    # (importing this module must not switch the backend of a caller's own plots).
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5), constrained_layout=True)
    for name, res in results.items():
        style = {"lw": 2.2} if name == "ensemble" else {"lw": 0.9, "alpha": 0.7 if name.startswith("seed") else 1.0}
        ax.plot(dates, np.cumprod(1 + res.net), label=name, **style)
    ax.set_title("Test split: growth of 1, net of transaction costs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


REPORT_NOTES = f"""
Annualised with 252 trading days; turnover is one-way per rebalance.  `sharpe_se` is the Sharpe
ratio's standard error (Lo 2002, iid returns): sqrt((1 + s^2 / 2) / n) * sqrt(252 / horizon) with
n rebalances and s the per-period Sharpe.  It is the sampling error of one policy's Sharpe; the
policies share the test dates, so a difference between two has its own (usually smaller) error:
`sharpe_vs_1n` and `p_value_vs_1n` are the difference to 1/N and its two-sided p-value (Ledoit-Wolf
2008, HAC).  `sortino`, `calmar`, `cvar_95` (mean loss of the worst 5 % of periods),
`break_even_cost` (the cost per unit traded at which the Sharpe falls to 1/N's) and `sharpe_<c>bp`
(the same weights charged c basis points per unit traded) are defined in docs/evaluation.md.
Every policy decides from data up to its decision date only and trades from its previous weights
(1/N first):

- **probe**: pooled ridge of the horizon return on the normalised features at t (fitted on the
  train split) with a trailing-252-day one-factor risk model, solved under the same constraints
  and cost as the ensemble (`data.oracle.probe_weights`); a trained model should reach at least this;
- **inverse volatility**: weights proportional to 1/sigma of the last {ESTIMATION_DAYS} daily
  returns; long_only weights above max weight are clipped and the rest renormalised, repeatedly;
- **min variance**, **sample mean-variance**, **risk parity**, **HRP** (skfolio): sample moments of the
  last {ESTIMATION_DAYS} daily returns (covariance shrunk {SHRINKAGE:g} towards its diagonal), under the
  same constraints, optimised without the cost term; costs are charged all the same.
"""


def write_report(out: StoragePath, label: str, table: pd.DataFrame, inputs: EnsembleInputs, idx) -> StoragePath:
    pf = inputs.ensemble.cfg.portfolio
    dates = inputs.panel.dates[idx]
    text = [
        f"# Backtest of {label}\n",
        f"Test split {dates[0]} .. {dates[-1]}: {len(idx)} rebalances every {inputs.horizon} days; "
        f"constraint {describe(pf)}; cost {pf.tc_rate} per unit traded; "
        f"ensemble of seeds {inputs.ensemble.seeds}.\n",
        to_markdown(table.round(4)),
        REPORT_NOTES,
        "![equity](equity.png)\n",
    ]
    return write_text_atomic(out / "report.md", "\n".join(text))


def backtest(experiment: Optional[StoragePath], out: StoragePath, data=None, device="cpu",
             runs: Optional[Sequence[str]] = None) -> StoragePath:
    """Run the test-split backtest and write metrics.csv, equity.png and report.md to ``out``."""
    table, results, inputs, idx = run_backtest(experiment, data, device, runs=runs)
    out = as_path(out)
    out.mkdir(parents=True, exist_ok=True)  # only once the experiment has loaded: a refused run writes nothing
    write_text_atomic(out / "metrics.csv", table.to_csv(index=False))
    plot_equity(results, inputs.panel.dates[idx], out / "equity.png")
    report = write_report(out, members_label(experiment, runs), table, inputs, idx)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"\nreport: {report}")
    return report


def main(argv=None) -> int:
    p = CliParser(prog="python -m ray_jobs.backtest", description=__doc__.split("\n\n")[0])
    add_member_arguments(p)
    p.add_argument("--data", default=None, help="Parquet factor panel (default: the training one)")
    p.add_argument("--out", required=True, help="report folder or URI")
    p.add_argument("--device", default="cpu", help="device for the members (default cpu)")
    args = p.parse_args(argv)
    return run_cli(lambda: backtest(args.experiment, args.out, args.data, args.device, runs=args.runs))


if __name__ == "__main__":
    sys.exit(main())
