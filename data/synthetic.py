"""The embedded default data: a deterministic synthetic panel with a planted, learnable signal.

Generating process (daily, factor i = 1..N, latent market factor k = 1..K=4; all draws from one
``numpy.random.Generator(PCG64(SEED))`` in a fixed order, so the bytes never change):

    r[t, i] = lambda_i + c_i * s[t-1, i] + sum_k B[i, k] f[t, k] + e[t, i]        (simple return)
    f[t, k] = sqrt(hf[t, k]) * eta,   hf[t+1, k] = w_k + a_k f[t, k]^2 + b_k hf[t, k]    (GARCH(1,1))
    e[t, i] = sqrt(he[t, i]) * eps,   he[t+1, i] = w_i + a_i e[t, i]^2 + b_i he[t, i]    (GARCH(1,1))
    s[t, i] = phi s[t-1, i] + sqrt(1 - phi^2) u[t, i],   u ~ N(0, 1)        (planted AR(1) signal)

- ``eta``, ``eps``: Student-t with NU = 5 degrees of freedom scaled to unit variance (fat tails);
  GARCH persistence a + b is 0.97-0.99 for the market factors, 0.93-0.985 for the idiosyncratic
  parts (volatility clustering).  Long-run variances: market factors 1 / 252 (unit annual vol).
- Loadings: factor i has a total annual vol v_i ~ U(5 %, 20 %) of which a share rho_i ~ U(0.3, 0.8)
  is systematic; B[i] is a random direction (positive market loading) scaled to that variance.
- Premia: lambda_i = B[i] . FACTOR_PREMIA / 252: a market premium that gives 1/N a Sharpe
  ratio of roughly 0.5.
- Planted signal: a persistent AR(1) state s (phi = PHI, half-life ~ 69 days), independent across
  factors, moves factor i's daily mean by c_i s with c_i = SIGNAL_SCALE * v_i / sqrt(252): a
  conditional daily Sharpe ratio of SIGNAL_SCALE * s.  The signal is only visible through the
  returns it drives, so the past-only trailing-return features (``ret_21d``, ``ret_63d``,
  ``mom_252_21``) are noisy estimates of it; an oracle that knows s does better than any model can.

:class:`SyntheticTruth` keeps, at every panel date t, what the oracle knows: s[t] and the GARCH
variances of day t+1.  ``moments(horizon)`` gives the exact conditional mean and covariance
(factor form) of the sum of the next ``horizon`` daily returns (the compounded return differs by
second-order terms, ~1e-6).  The returns go through :func:`data.build_panel.compute_features`, so
the synthetic panel obeys the same contract as a real one.  The Parquet file is cached (see
:func:`cache_dir`) with a JSON sidecar holding its sha256 and fingerprint; a cache whose bytes or
fingerprint do not match is regenerated.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from data.build_panel import WARMUP_DAYS, compute_features
from core.files import write_text_atomic
from data.panel import Panel, file_sha256, read_panel, write_panel

GENERATOR_VERSION = 1
"""Bump whenever the process below changes: it is part of the cache file name."""
SEED = 20_240_607
N_LATENT = 4
NU = 5.0
PHI = 0.99
SIGNAL_SCALE = 0.05
FACTOR_PREMIA = (0.5, 0.2, 0.0, 0.0)
"""Annual premia of the unit-vol latent factors (Sharpe ratios)."""
BURN_IN = 500
"""Days simulated and dropped before the first returned day, so GARCH and s start stationary."""
START_DATE = "2000-01-03"
DAYS_PER_YEAR = 261
"""Business days per year (``pd.bdate_range``)."""


@dataclass(frozen=True, eq=False)
class SyntheticTruth:
    """What the oracle knows at each date t of the panel (T dates, N factors, K latent factors).

    Attributes
    ----------
    dates : datetime64[D], (T,)
    loadings : (N, K) float64, B
    premia : (N,) float64, lambda (daily)
    drift_scale : (N,) float64, c
    phi : float
    signal : (T, N) float64, s[t]
    factor_var_next, idio_var_next : (T, K), (T, N) float64, GARCH variances of day t+1
    factor_var_lr, factor_persist : (K,), long-run variance and a + b
    idio_var_lr, idio_persist : (N,)
    """

    dates: np.ndarray
    loadings: np.ndarray
    premia: np.ndarray
    drift_scale: np.ndarray
    phi: float
    signal: np.ndarray
    factor_var_next: np.ndarray
    idio_var_next: np.ndarray
    factor_var_lr: np.ndarray
    factor_persist: np.ndarray
    idio_var_lr: np.ndarray
    idio_persist: np.ndarray

    def moments(self, horizon: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Conditional moments of sum_{k=1..h} r[t+k] given the state at t, for every t.

        Returns
        -------
        mean : (T, N)
        factor_var : (T, K)  covariance = B diag(factor_var[t]) B^T + diag(idio_var[t])
        idio_var : (T, N)
        """
        h, phi = horizon, self.phi
        mean = h * self.premia + self.drift_scale * self.signal * _geom(phi, h)  # (T, N)
        fvar = h * self.factor_var_lr + (self.factor_var_next - self.factor_var_lr) * _geom(self.factor_persist, h)
        ivar = h * self.idio_var_lr + (self.idio_var_next - self.idio_var_lr) * _geom(self.idio_persist, h)
        # The drifts of days t+2..t+h depend on signal innovations not yet drawn at t.
        lags = np.arange(1, h)
        drift_var = (1 - phi**2) * np.sum(((1 - phi ** (h - lags)) / (1 - phi)) ** 2)
        return mean, fvar, ivar + self.drift_scale**2 * drift_var  # (T, N), (T, K), (T, N)

    def covariance(self, t: int, horizon: int) -> np.ndarray:
        """Dense (N, N) conditional covariance of the next ``horizon`` days' summed returns at t."""
        _, fvar, ivar = self.moments(horizon)
        return (self.loadings * fvar[t]) @ self.loadings.T + np.diag(ivar[t])  # (N, N)


def _geom(p, h: int):
    """sum_{j=0}^{h-1} p^j, elementwise."""
    return sum(np.asarray(p, dtype=np.float64) ** j for j in range(h))


def _draw_params(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    vol = rng.uniform(0.05, 0.20, n)  # (N,) annual total vol
    share = rng.uniform(0.3, 0.8, n)  # (N,) systematic share of the variance
    raw = np.column_stack([rng.uniform(0.5, 1.5, n), rng.normal(0.0, 0.7, (n, N_LATENT - 1))])  # (N, K)
    loadings = raw * (np.sqrt(share) * vol / np.linalg.norm(raw, axis=1))[:, None]  # (N, K)
    f_persist, i_persist = rng.uniform(0.97, 0.99, N_LATENT), rng.uniform(0.93, 0.985, n)
    f_alpha, i_alpha = rng.uniform(0.05, 0.09, N_LATENT), rng.uniform(0.03, 0.08, n)
    return {
        "loadings": loadings,
        "premia": loadings @ np.array(FACTOR_PREMIA) / 252,
        "drift_scale": SIGNAL_SCALE * vol / np.sqrt(252),
        "f_lr": np.full(N_LATENT, 1 / 252), "f_alpha": f_alpha, "f_persist": f_persist,
        "i_lr": (1 - share) * vol**2 / 252, "i_alpha": i_alpha, "i_persist": i_persist,
    }


def _t_draws(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    return rng.standard_t(NU, shape) * np.sqrt((NU - 2) / NU)  # unit variance


def simulate(n_factors: int, n_days: int, seed: int = SEED) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Simulate ``n_days`` daily returns (after BURN_IN) of the process in the module docstring.

    Returns
    -------
    returns : (n_days, N) float64
    state : dict with the parameters and, per day t, ``signal`` (n_days, N), ``factor_var_next``
        (n_days, K), ``idio_var_next`` (n_days, N): the state known at t's close.
    """
    rng = np.random.Generator(np.random.PCG64(seed))
    p = _draw_params(rng, n_factors)
    total = BURN_IN + n_days
    s = rng.standard_normal(n_factors)  # (N,) stationary start
    eta, eps = _t_draws(rng, (total, N_LATENT)), _t_draws(rng, (total, n_factors))  # (D, K), (D, N)
    u = rng.standard_normal((total, n_factors)) * np.sqrt(1 - PHI**2)  # (D, N)
    hf, he = p["f_lr"].copy(), p["i_lr"].copy()
    f_beta, i_beta = p["f_persist"] - p["f_alpha"], p["i_persist"] - p["i_alpha"]
    f_omega, i_omega = p["f_lr"] * (1 - p["f_persist"]), p["i_lr"] * (1 - p["i_persist"])
    returns = np.empty((total, n_factors))
    signal, fnext, inext = np.empty((total, n_factors)), np.empty((total, N_LATENT)), np.empty((total, n_factors))
    for t in range(total):  # GARCH is sequential in time; everything else is vectorised over factors
        f = np.sqrt(hf) * eta[t]  # (K,)
        e = np.sqrt(he) * eps[t]  # (N,)
        returns[t] = p["premia"] + p["drift_scale"] * s + p["loadings"] @ f + e  # (N,)
        s = PHI * s + u[t]
        hf = f_omega + p["f_alpha"] * f**2 + f_beta * hf
        he = i_omega + p["i_alpha"] * e**2 + i_beta * he
        signal[t], fnext[t], inext[t] = s, hf, he
    keep = slice(BURN_IN, None)
    state = dict(p, signal=signal[keep], factor_var_next=fnext[keep], idio_var_next=inext[keep])
    return returns[keep], state


def synthetic_dates(n_days: int) -> pd.DatetimeIndex:
    return pd.bdate_range(START_DATE, periods=n_days)


def generate(n_factors: int, years: int, seed: int = SEED) -> tuple[pd.DataFrame, SyntheticTruth]:
    """The synthetic long panel (contract columns) and its truth, aligned to the panel dates.

    The panel has ``years * DAYS_PER_YEAR`` business days; WARMUP_DAYS more are simulated first
    for the features.
    """
    n_days = years * DAYS_PER_YEAR + WARMUP_DAYS
    returns, st = simulate(n_factors, n_days, seed)
    dates = synthetic_dates(n_days)
    names = [f"F{i:03d}" for i in range(n_factors)]
    long = compute_features(pd.DataFrame(returns, index=dates, columns=names))
    keep = slice(WARMUP_DAYS, None)
    truth = SyntheticTruth(
        dates=dates[keep].values.astype("datetime64[D]"), loadings=st["loadings"], premia=st["premia"],
        drift_scale=st["drift_scale"], phi=PHI, signal=st["signal"][keep],
        factor_var_next=st["factor_var_next"][keep], idio_var_next=st["idio_var_next"][keep],
        factor_var_lr=st["f_lr"], factor_persist=st["f_persist"],
        idio_var_lr=st["i_lr"], idio_persist=st["i_persist"],
    )
    return long, truth


def cache_dir() -> Path:
    """``$XLSTM_PORTFOLIO_CACHE`` if set, else ``<repo root>/.cache`` (git-ignored)."""
    env = os.environ.get("XLSTM_PORTFOLIO_CACHE")
    return Path(env) if env else Path(__file__).resolve().parents[1] / ".cache"


def cache_path(n_factors: int, years: int, seed: int = SEED) -> Path:
    """Cache file; its name carries every constant of the process, so a changed one is a new file."""
    consts = (GENERATOR_VERSION, NU, PHI, SIGNAL_SCALE, FACTOR_PREMIA, BURN_IN, START_DATE, DAYS_PER_YEAR, WARMUP_DAYS)
    key = hashlib.sha256(repr(consts).encode()).hexdigest()[:10]
    return cache_dir() / f"synthetic_panel_v{GENERATOR_VERSION}_n{n_factors}_y{years}_s{seed}_{key}.parquet"


def _cached(path: Path) -> Panel | None:
    """The cached panel if its bytes and fingerprint match the sidecar; None (with a note) otherwise."""
    meta_path = path.with_suffix(".json")
    if not path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        if file_sha256(path) != meta["file_sha256"]:
            raise ValueError("file sha256 differs from the sidecar")
        panel = read_panel(path)
        if panel.fingerprint != meta["fingerprint"]:
            raise ValueError("panel fingerprint differs from the sidecar")
        return panel
    except Exception as exc:  # any defect of a cache file means: rebuild it, loudly
        print(f"synthetic cache {path} is unusable ({exc}); regenerating", file=sys.stderr)
        return None


def load_synthetic_panel(n_factors: int, years: int, seed: int = SEED) -> Panel:
    """The embedded panel: from the cache if intact, else generated (a few seconds) and cached."""
    path = cache_path(n_factors, years, seed)
    panel = _cached(path)
    if panel is not None:
        return panel
    print(f"generating the synthetic panel ({n_factors} factors, {years} years) -> {path}", file=sys.stderr)
    long, _ = generate(n_factors, years, seed)
    digest = write_panel(long, path, overwrite=True)
    panel = read_panel(path)
    meta = {"file_sha256": digest, "fingerprint": panel.fingerprint, "generator_version": GENERATOR_VERSION,
            "n_factors": n_factors, "years": years, "seed": seed}
    write_text_atomic(path.with_suffix(".json"), json.dumps(meta, indent=1))
    return panel
