"""Reference Sharpe ratios on the synthetic panel: the oracle, a linear probe and 1/N.

``python -m data.oracle --config CONFIG`` prints, per split, the annualised Sharpe ratio of

- **oracle**: knows the true conditional mean and covariance of the next ``horizon`` days
  (:class:`data.synthetic.SyntheticTruth`) and solves, with cvxpy + Clarabel directly,
  ``max mu'w - gamma w'Sigma w - c ||w - w_prev||_1`` s.t. ``1'w = 1`` and the constraints of
  ``PortfolioConfig`` (long_only: 0 <= w <= max_weight; long_short: ||w||_1 <= leverage);
- **probe**: the same problem with a past-only estimate: mu = a pooled ridge regression of the
  horizon return on the 9 normalised features at t (fitted on the train split), Sigma = a
  one-factor (equal-weight market) + diagonal model of the trailing 252 days' returns; it shows
  how much of the planted signal the features reveal (a trained model should reach at least this);
- **1/N**: equal weights.

The conventions of :mod:`data.scoring` (which also scores the model), so a model's Sharpe compares directly: rebalances
are non-overlapping, every ``horizon`` decision dates from the split's first one; the first trades
from 1/N, each later one from the previous target weights (no drift).  A period's net return is
``w' R - tc_rate * ||w - w_prev||_1`` with R the compounded horizon returns; turnover is reported
one-way (half the L1 change).  Sharpe = mean / std (ddof=1) of the net returns * sqrt(252 / h).
"""

from __future__ import annotations

import sys
import time
from typing import Callable

import cvxpy as cp
import numpy as np

from data.scoring import PolicyResult, score_weights
from data.splits import rebalance_indices
from data.windows import PreparedData, horizon_returns, prepare
from core.cli import config_parser, run_cli
from core.config import Config, PortfolioConfig, load_config
from core.errors import DataError, SolverError
from portfolio.constraints import check_solution
from portfolio.cvx import build_problem


class MeanVarianceProblem:
    """The portfolio problem as a parameterised cvxpy problem, reused across dates.

    The training problem itself (:func:`portfolio.cvx.build_problem`: the same objective and
    constraints), with Sigma = L L^T + diag(sd^2), L (N, K): a factor form keeps it DPP and small.
    """

    def __init__(self, n_factors: int, rank: int, pf: PortfolioConfig):
        self.pf = pf
        self.problem, self.params, self.w = build_problem(
            n_factors, rank, pf.constraint, pf.max_weight, pf.leverage, pf.risk_aversion, pf.tc_rate, prev_param=True
        )

    def solve(self, mu: np.ndarray, factor: np.ndarray, sd: np.ndarray, w_prev: np.ndarray) -> np.ndarray:
        """Optimal weights (N,) for mu (N,), factor (N, K), sd (N,), w_prev (N,).  Checked feasible."""
        for param, value in zip(self.params, (mu, factor, sd, w_prev)):
            param.value = value
        self.problem.solve(solver=cp.CLARABEL)
        if self.problem.status != cp.OPTIMAL or self.w.value is None:
            raise SolverError(f"oracle problem status {self.problem.status!r} (Clarabel); expected 'optimal'.")
        w = np.asarray(self.w.value, dtype=np.float64)
        check_solution(w, w_prev, self.pf, backend="oracle problem (Clarabel)")
        return w


def chain_policy(decide: Callable, rebalances: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Call ``decide(t, w_prev) -> w (N,)`` at each decision index in order, from 1/N.

    Returns
    -------
    weights, w_prev : np.ndarray, float64, (n_reb, N)
        Each rebalance's target weights and the weights it traded from (the previous target).
    """
    w_prev = np.full(n, 1.0 / n)
    weights, prevs = [], []
    for t in rebalances:
        w = decide(int(t), w_prev)  # (N,)
        weights.append(w)
        prevs.append(w_prev)
        w_prev = w
    return np.stack(weights).astype(np.float64), np.stack(prevs).astype(np.float64)


def run_policy(
    decide: Callable, r_horizon: np.ndarray, rebalances: np.ndarray, tc_rate: float, horizon: int
) -> PolicyResult:
    """Backtest ``decide(t, w_prev) -> w (N,)`` at the decision indices ``rebalances`` (n_reb,).

    ``r_horizon`` (T, N): compounded returns over t+1..t+horizon (see :func:`horizon_returns`).
    Scored by :func:`data.scoring.score_weights`, as the model's validation and backtest are.
    """
    weights, prevs = chain_policy(decide, rebalances, r_horizon.shape[1])
    idx = np.asarray(rebalances)
    return score_weights(idx, weights, prevs, r_horizon[idx], tc_rate, horizon)


def probe_coefficients(prep, r_horizon: np.ndarray) -> np.ndarray:
    """The probe's pooled ridge (penalty 1) of the horizon return on the normalised features at t,
    fitted on the train split only: ``[intercept, coef_1 .. coef_F]``; it reads the global
    standardisation whatever ``data.normalize`` is, so that it stays one reference, float64 (F + 1,)."""
    x = prep.normalizer.as_global().transform(prep.panel.features[prep.splits.train]).astype(np.float64)  # (n_train, N, F)
    xt = x.reshape(-1, x.shape[-1])  # (n_train * N, F)
    yt = r_horizon[prep.splits.train].reshape(-1)  # (n_train * N,)
    xt1 = np.column_stack([np.ones(len(xt)), xt])
    return np.linalg.solve(xt1.T @ xt1 + 1.0 * np.eye(xt1.shape[1]), xt1.T @ yt)


def probe_means(prep, r_horizon: np.ndarray) -> np.ndarray:
    """The probe's expected horizon returns at every date, (T, N): :func:`probe_coefficients`
    applied to the normalised features at t."""
    beta = probe_coefficients(prep, r_horizon)
    x = prep.normalizer.as_global().transform(prep.panel.features).astype(np.float64)  # (T, N, F)
    return beta[0] + x @ beta[1:]  # (T, N)


def probe_ic(cfg: Config, panel_path: str | None = None) -> dict[str, float]:
    """{split: the probe's mean rank IC}: the mean over the split's rebalance dates of the Spearman
    correlation of its mu with the realised horizon returns."""
    from scipy.stats import spearmanr

    prep = prepare(cfg, panel_path)
    h = cfg.data.prediction_horizon
    r_horizon = horizon_returns(prep.panel.returns, h)  # (T, N)
    mu = probe_means(prep, r_horizon)
    out = {}
    for name, split in prep.splits.items():
        idx = rebalance_indices(split, h)
        out[name] = float(np.nanmean([spearmanr(mu[t], r_horizon[t]).statistic for t in idx]))
    return out


def _probe_policy(prep, problem: MeanVarianceProblem, r_horizon: np.ndarray) -> Callable:
    """Past-only policy: ridge on the features at t (train split) + a trailing one-factor risk model."""
    means = probe_means(prep, r_horizon)  # (T, N)
    h = prep.data_cfg.prediction_horizon
    returns = prep.panel.returns

    def decide(t: int, w_prev: np.ndarray) -> np.ndarray:
        mu = means[t]  # (N,)
        past = returns[max(0, t - 251): t + 1]  # (<=252, N), dates <= t only
        dev = past - past.mean(axis=0)  # (n_obs, N)
        market = dev.mean(axis=1)  # (n_obs,) equal-weight market
        var_m = market @ market  # sums of squares: the 1 / (n_obs - 1) cancels in beta
        betas = dev.T @ market / var_m  # (N,)
        scale = h / (len(past) - 1)
        resid = np.maximum((dev**2).sum(axis=0) - betas**2 * var_m, 1e-12) * scale  # (N,)
        factor = (betas * np.sqrt(var_m * scale))[:, None]  # (N, 1)
        return problem.solve(mu, factor, np.sqrt(resid), w_prev)

    return decide


def probe_weights(prep: PreparedData, rebalances: np.ndarray, pf: PortfolioConfig) -> np.ndarray:
    """The probe's chained target weights at the decision indices ``rebalances`` (K,), from 1/N.

    The ridge is fitted on ``prep``'s train split (features normalised by ``prep.normalizer``);
    the decision at t reads the features at t and the returns of dates t-251..t only.  The problem
    (constraints, risk aversion, cost ``pf.tc_rate``) is :class:`MeanVarianceProblem`.

    Returns
    -------
    np.ndarray, float64, (K, N)
    """
    rebalances = np.asarray(rebalances)
    train_end = int(prep.splits.train[-1]) + prep.data_cfg.prediction_horizon  # last train label day
    if rebalances.ndim != 1 or rebalances.size == 0:
        raise DataError(
            f"probe_weights: rebalances has shape {rebalances.shape}; pass a 1-D array of >= 1 decision index."
        )
    if int(rebalances.min()) <= train_end:
        raise DataError(
            f"probe_weights: decision index {int(rebalances.min())} is not after the train split's last label day "
            f"({train_end}): the ridge would see its own targets. Pass val or test rebalances."
        )
    n = prep.panel.returns.shape[1]
    r_horizon = horizon_returns(prep.panel.returns, prep.data_cfg.prediction_horizon)  # (T, N)
    decide = _probe_policy(prep, MeanVarianceProblem(n, 1, pf), r_horizon)
    return chain_policy(decide, rebalances, n)[0]


def policy_table(
    cfg: Config, panel_path: str | None = None, probe: bool = True, progress: bool = False,
    splits: tuple[str, ...] | None = None,
) -> dict[str, dict[str, PolicyResult]]:
    """{split: {"oracle" | "probe" | "equal": PolicyResult}} on the embedded synthetic panel.

    A panel file (``panel_path`` or ``cfg.data.panel_path``) has no truth: only probe and 1/N.
    ``probe=False`` skips the probe (half the time); ``splits`` limits the table to those splits.
    """
    from data.synthetic import SEED, generate

    prep = prepare(cfg, panel_path)
    h, n, pf = cfg.data.prediction_horizon, cfg.data.num_factors, cfg.portfolio
    r_horizon = horizon_returns(prep.panel.returns, h)  # (T, N)
    policies: dict[str, Callable] = {"equal": lambda t, w: np.full(n, 1.0 / n)}
    if probe:
        policies["probe"] = _probe_policy(prep, MeanVarianceProblem(n, 1, pf), r_horizon)
    if (panel_path or cfg.data.panel_path) is None:
        long, truth = generate(n, cfg.data.synthetic_years, SEED)
        same = np.array_equal(truth.dates, prep.panel.dates) and np.array_equal(
            long["ret"].to_numpy().reshape(prep.panel.returns.shape), prep.panel.returns
        )
        if not same:  # the truth is regenerated, so it must describe exactly the cached returns
            raise DataError(
                "the regenerated synthetic truth does not match the cached panel; delete the cache folder "
                "(XLSTM_PORTFOLIO_CACHE or <repo>/.cache) and rerun."
            )
        mean, fvar, ivar = truth.moments(h)  # (T, N), (T, K), (T, N)
        oracle = MeanVarianceProblem(n, truth.loadings.shape[1], pf)
        policies["oracle"] = lambda t, w: oracle.solve(
            mean[t], truth.loadings * np.sqrt(fvar[t]), np.sqrt(ivar[t]), w
        )
    table: dict[str, dict[str, PolicyResult]] = {}
    for name, split in prep.splits.items():
        if splits is not None and name not in splits:
            continue
        reb = rebalance_indices(split, h)
        table[name] = {}
        for pol, decide in policies.items():
            start = time.perf_counter()
            table[name][pol] = run_policy(decide, r_horizon, reb, pf.tc_rate, h)
            if progress:
                print(f"  {name:5s} {pol:6s} {len(reb)} rebalances in {time.perf_counter() - start:.1f} s",
                      file=sys.stderr, flush=True)
    return table


def format_table(table: dict[str, dict[str, PolicyResult]]) -> str:
    """Sharpe ratios and mean one-way turnover per split, one row per split."""
    pols = [p for p in ("oracle", "probe", "equal") if p in next(iter(table.values()))]
    label = {"oracle": "oracle", "probe": "probe", "equal": "1/N"}
    head = f"{'split':6s} {'rebal':>5s} " + " ".join(f"{label[p] + ' SR':>10s}" for p in pols)
    head += " " + " ".join(f"{label[p] + ' turn':>11s}" for p in pols if p != "equal")
    lines = [head]
    for name, row in table.items():
        any_res = next(iter(row.values()))
        line = f"{name:6s} {any_res.n_rebalances:5d} " + " ".join(f"{row[p].sharpe:10.2f}" for p in pols)
        line += " " + " ".join(f"{row[p].mean_turnover:11.3f}" for p in pols if p != "equal")
        lines.append(line)
    return "\n".join(lines)


def report(config: str, data: str | None, overrides: list[str]) -> None:
    """Print the policy table of a config (and panel)."""
    start = time.perf_counter()
    cfg = load_config(config, overrides)
    table = policy_table(cfg, data, progress=True)
    d, pf = cfg.data, cfg.portfolio
    print(f"lookback {d.lookback_days}, horizon {d.prediction_horizon}, {pf.constraint}, max_weight "
          f"{pf.max_weight}, gamma {pf.risk_aversion}, tc {pf.tc_rate}  ({time.perf_counter() - start:.1f} s)")
    print(format_table(table))


def main(argv: list[str] | None = None) -> int:
    args = config_parser(
        "python -m data.oracle", "Annualised net Sharpe of the oracle, a linear probe and 1/N on each split."
    ).parse_args(argv)
    return run_cli(lambda: report(args.config, args.data, args.set))


if __name__ == "__main__":
    sys.exit(main())
