"""The report's figures (matplotlib, Agg): log equity, drawdowns, rolling one-year Sharpe, weights.

Every curve is computed from a policy's per-rebalance net returns (:class:`data.scoring.PolicyResult`),
with the scorer's conventions: compounded equity, drawdown from the running peak (starting at 1),
Sharpe annualised with ``252 / horizon`` periods a year over a trailing year of rebalances.
"""

from __future__ import annotations

import math

import numpy as np

from core.files import atomic_path
from core.storage import StoragePath, as_path
from data.scoring import TRADING_DAYS

TOP_FACTORS = 10  # the weights plot shows the largest average holdings and groups the rest


def _pyplot():
    # Deferred: selects the headless backend only when a figure is drawn (importing this module must
    # not switch the backend of a caller's own plots).
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _style(name: str) -> dict:
    if name == "ensemble":
        return {"lw": 2.2, "color": "black"}
    return {"lw": 0.7, "alpha": 0.5, "color": "grey"} if name.startswith("seed ") else {"lw": 1.0}


def drawdowns(net: np.ndarray) -> np.ndarray:
    """(K,) fraction below the running peak of the compounded equity (the peak starts at 1)."""
    equity = np.cumprod(1.0 + np.asarray(net, dtype=np.float64))
    peak = np.maximum.accumulate(np.concatenate([[1.0], equity]))[1:]
    return 1.0 - equity / peak


def rolling_sharpe(net: np.ndarray, horizon: int) -> np.ndarray:
    """(K,) annualised Sharpe over the trailing year of rebalances; NaN until a year has passed."""
    window = max(2, int(round(TRADING_DAYS / horizon)))
    out = np.full(len(net), np.nan)
    for k in range(window - 1, len(net)):
        part = net[k - window + 1: k + 1]
        std = part.std(ddof=1)
        out[k] = part.mean() / std * math.sqrt(TRADING_DAYS / horizon) if std > 1e-12 else 0.0
    return out


def _lines(results: dict, dates, values, title: str, path: StoragePath, log: bool = False) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 5), constrained_layout=True)
    labelled_member = False
    for name, res in results.items():
        label = name
        if name.startswith("seed "):
            label, labelled_member = (None if labelled_member else "members"), True
        ax.plot(dates, values(res), label=label, **_style(name))
    if log:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path.name


def _weights(weights: np.ndarray, dates, factors: list[str], path: StoragePath) -> str:
    plt = _pyplot()
    top = np.argsort(weights.mean(axis=0))[::-1][:TOP_FACTORS]
    rest = np.setdiff1d(np.arange(weights.shape[1]), top)
    stacks = [weights[:, i] for i in top] + ([weights[:, rest].sum(axis=1)] if len(rest) else [])
    labels = [factors[i] for i in top] + ([f"other {len(rest)}"] if len(rest) else [])
    colors = [plt.cm.tab10(i % 10) for i in range(len(top))] + (["lightgrey"] if len(rest) else [])
    fig, ax = plt.subplots(figsize=(10, 5), constrained_layout=True)
    ax.stackplot(dates, np.vstack(stacks), labels=labels, colors=colors, step="post")
    ax.set_title("Ensemble weights at each rebalance")
    ax.set_ylim(0, max(1.0, float(weights.clip(min=0).sum(axis=1).max())))
    ax.legend(fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path.name


def plot_report(results: dict, dates, factors: list[str], out: StoragePath) -> list[str]:
    """Write equity.png, drawdown.png, rolling_sharpe.png and weights.png to ``out`` (a folder or a
    URI); returns their file names."""
    out = as_path(out)
    return [
        _lines(results, dates, lambda r: np.cumprod(1 + r.net), "Growth of 1, net of costs (log scale)",
               out / "equity.png", log=True),
        _lines(results, dates, lambda r: -drawdowns(r.net), "Drawdown from the running peak", out / "drawdown.png"),
        _lines(results, dates, lambda r: rolling_sharpe(r.net, r.horizon), "Rolling one-year Sharpe ratio",
               out / "rolling_sharpe.png"),
        _weights(results["ensemble"].weights, dates, factors, out / "weights.png"),
    ]
