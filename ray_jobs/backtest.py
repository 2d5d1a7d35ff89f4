"""Out-of-sample backtest of an ensemble on the test split, against classic baselines.

  python -m ray_jobs.backtest --experiment runs/ensembles/NAME --out runs/report

Rebalances every ``horizon`` days over the test split (non-overlapping holding periods), each
policy trading from its previous weights, net of ``portfolio.tc_rate`` per unit traded, all under
the training constraints.  Policies: the ensemble, each member, 1/N, minimum variance and sample
mean-variance.  The baselines estimate from the ``ESTIMATION_DAYS`` daily returns up to the
decision date (no look-ahead), scale to the horizon, shrink the covariance towards its diagonal,
and optimise without the cost term (costs are charged all the same).
Writes ``report.md``, ``metrics.csv`` and ``equity.png``.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from data import horizon_returns
from model.errors import PortfolioTrainerError
from ray_jobs.cli import CliParser, run_cli
from ray_jobs.evaluation import TRADING_DAYS, PolicyResult, max_drawdown, score_weights
from ray_jobs.inference import EnsembleInputs

ESTIMATION_DAYS = 252
SHRINKAGE = 0.2  # weight of the diagonal target in the sample covariance


def sample_moments(returns: np.ndarray, t: int, horizon: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Horizon mean and shrunk covariance from the daily returns of dates t-E+1..t (no look-ahead).

    Sigma = (1 - s) * S + s * diag(S) with S the sample covariance, kept in factor form for the
    solver: B = sqrt((1 - s) / (E - 1)) * X_c^T (n, E) and d = s * diag(S), both times horizon.
    Returns mu (n,), B (n, E), d (n,).
    """
    window = returns[max(0, t - ESTIMATION_DAYS + 1): t + 1]  # (E, N), dates <= t only
    centred = window - window.mean(axis=0)  # (E, N)
    e = window.shape[0]
    factor = np.sqrt((1 - SHRINKAGE) / (e - 1) * horizon) * centred.T  # (N, E)
    diag = SHRINKAGE * centred.var(axis=0, ddof=1) * horizon  # (N,)
    return window.mean(axis=0) * horizon, factor, diag


def baseline_weights(returns: np.ndarray, indices: np.ndarray, horizon: int, cfg, use_mean: bool) -> np.ndarray:
    """Chained solves of minimum variance (use_mean=False) or sample mean-variance (cvxpy, Clarabel)."""
    from model.portfolio import solve_reference

    if indices[0] < ESTIMATION_DAYS - 1:
        raise PortfolioTrainerError(
            f"the baselines need {ESTIMATION_DAYS} days of history before the first test rebalance "
            f"(index {indices[0]}); use a longer panel."
        )
    n = returns.shape[1]
    # The classic baselines: no cost term in their objective (with it, 5-day risk is too small
    # to ever pay for leaving 1/N, and "minimum variance" would be 1/N); costs are still charged.
    classic = dataclasses.replace(cfg, tc_rate=0.0)
    prev, rows = np.full(n, 1.0 / n), []
    for t in indices:
        mu, factor, diag = sample_moments(returns, int(t), horizon)
        w = solve_reference(mu if use_mean else np.zeros(n), factor, diag, prev, classic, tol=1e-8)
        rows.append(w)
        prev = w
    return np.vstack(rows)


def chained_prev(weights: np.ndarray) -> np.ndarray:
    n = weights.shape[1]
    return np.vstack([np.full((1, n), 1.0 / n), weights[:-1]])


def summary_row(name: str, result: PolicyResult) -> dict:
    periods = TRADING_DAYS / result.horizon
    return {
        "policy": name,
        "annual_return": float(result.net.mean() * periods),
        "annual_volatility": float(result.net.std(ddof=1) * math.sqrt(periods)),
        "sharpe": result.sharpe,
        "max_drawdown": max_drawdown(result.net),
        "turnover": result.mean_turnover,
    }


def run_backtest(experiment: Path, data=None, device: str = "cpu") -> tuple[pd.DataFrame, dict, EnsembleInputs, np.ndarray]:
    inputs = EnsembleInputs.load(Path(experiment), data, device)
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
    n = returns.shape[1]
    policies["1/N"] = np.full((len(idx), n), 1.0 / n)
    policies["min variance"] = baseline_weights(returns, idx, h, cfg, use_mean=False)
    policies["sample mean-variance"] = baseline_weights(returns, idx, h, cfg, use_mean=True)
    results = {k: score_weights(idx, w, chained_prev(w), r_h, cfg.tc_rate, h) for k, w in policies.items()}
    table = pd.DataFrame([summary_row(k, r) for k, r in results.items()])
    return table, results, inputs, idx


def plot_equity(results: dict, dates, path: Path) -> None:
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
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(out: Path, experiment: Path, table: pd.DataFrame, inputs: EnsembleInputs, idx) -> Path:
    from ray_jobs.analyze import to_markdown

    cfg = inputs.ensemble.cfg
    dates = inputs.panel.dates[idx]
    text = [
        f"# Backtest of {Path(experiment).name}\n",
        f"Test split {dates[0]} .. {dates[-1]}: {len(idx)} rebalances every {inputs.horizon} days; "
        f"constraint {cfg.portfolio.constraint} (max weight {cfg.portfolio.max_weight}, leverage "
        f"{cfg.portfolio.leverage}); cost {cfg.portfolio.tc_rate} per unit traded; "
        f"ensemble of seeds {inputs.ensemble.seeds}.\n",
        to_markdown(table.round(4)),
        "\nAnnualised with 252 trading days; turnover is one-way per rebalance.\n",
        "![equity](equity.png)\n",
    ]
    path = out / "report.md"
    path.write_text("\n".join(text))
    return path


def backtest(experiment: Path, out: Path, data=None, device="cpu") -> Path:
    """Run the test-split backtest and write metrics.csv, equity.png and report.md to ``out``."""
    table, results, inputs, idx = run_backtest(Path(experiment), data, device)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)  # only once the experiment has loaded: a refused run writes nothing
    table.to_csv(out / "metrics.csv", index=False)
    plot_equity(results, inputs.panel.dates[idx], out / "equity.png")
    report = write_report(out, Path(experiment), table, inputs, idx)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"\nreport: {report}")
    return report


def main(argv=None) -> int:
    p = CliParser(prog="python -m ray_jobs.backtest", description=__doc__.split("\n\n")[0])
    p.add_argument("--experiment", required=True, help="ensemble experiment folder (STORAGE/NAME)")
    p.add_argument("--data", default=None, help="Parquet factor panel (default: the training one)")
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument("--device", default="cpu", help="device for the members (default cpu)")
    args = p.parse_args(argv)
    return run_cli(lambda: backtest(Path(args.experiment), Path(args.out), args.data, args.device))


if __name__ == "__main__":
    sys.exit(main())
