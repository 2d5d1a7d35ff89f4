"""Normalisation and windows: what a model sees for a decision at date index t.

For a valid decision t (see :mod:`data.splits`):

- input ``x``: normalised ``features[t-lookback+1 .. t]``, (lookback, n_factors, n_features):
  dates <= t only, so nothing after t can reach a decision;
- targets: the daily returns of days ``t+1 .. t+horizon``, (horizon, n_factors), and their
  compounded horizon return ``prod(1 + r) - 1``, (n_factors,).

:class:`Normalizer` standardises each feature with its mean / std over the dates of the training
span (date index <= last train decision) and all factors, or (``data.normalize: cross_section``)
on each date across that date's factors.  :class:`WindowSource` keeps the
normalised panel on a device once and gathers batches of windows with index arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from data.panel import Panel, read_panel
from data.splits import Splits, make_splits, splits_for  # noqa: F401  (make_splits re-exported)
from core.config import Config, DataConfig
from core.errors import DataError, ShapeError


def horizon_returns(returns: np.ndarray, horizon: int) -> np.ndarray:
    """Compounded returns over t+1..t+horizon for every t: (T, N) float64, NaN where t+horizon > T-1."""
    t_len = len(returns)
    growth = np.ones_like(returns)  # (T, N)
    for k in range(1, horizon + 1):
        growth[: t_len - k] *= 1 + returns[k:]
    out = growth - 1
    out[t_len - horizon:] = np.nan
    return out


def smoothed_horizon_returns(returns: np.ndarray, horizon: int, days: int, label_end: int) -> np.ndarray:
    """The training target of ``training.target_days``: the compounded return over t+1..t+days,
    brought to ``horizon`` days geometrically, ``(prod(1 + r))**(horizon / n) - 1``, with n the days
    used; (T, N) float64.

    No day after ``label_end`` is used: a decision whose ``days`` run past it uses its days up to
    ``label_end`` only (n < days), and a decision with fewer than ``horizon`` days before
    ``label_end`` gets NaN.  With ``days == horizon`` it is :func:`horizon_returns` wherever both are
    defined.  Under a persistent signal, the mean return of the next ``days`` days carries nearly the
    next ``horizon`` days' expected return with ``horizon / days`` of their noise variance.
    """
    t_len = len(returns)
    if days < horizon:
        raise ValueError(f"smoothed_horizon_returns: days = {days} must be >= horizon = {horizon}.")
    if not 0 <= label_end <= t_len - 1:
        raise ValueError(f"smoothed_horizon_returns: label_end = {label_end} must lie in [0, {t_len - 1}].")
    logs = np.zeros((t_len + 1, returns.shape[1]))  # logs[k] = sum of log(1 + r) over days < k
    np.cumsum(np.log1p(returns), axis=0, out=logs[1:])
    t = np.arange(t_len)
    end = np.minimum(t + days, label_end)  # the last label day each decision may use
    n = end - t  # (T,) days used
    out = np.full(returns.shape, np.nan)
    ok = n >= horizon
    out[ok] = np.expm1((logs[end[ok] + 1] - logs[t[ok] + 1]) * (horizon / n[ok])[:, None])
    return out


@dataclass(frozen=True, eq=False)
class Normalizer:
    """Per-feature standardisation fitted on the training span.

    Attributes
    ----------
    mean, std : np.ndarray, float64, (F,)
    feature_names : tuple of str, (F,)
    fit_end : int
        Last date index used for the fit (the last train decision index).
    mode : str
        ``data.normalize``: global, by ``mean`` / ``std``; cross_section, each date's features by
        their mean and std across that date's factors (``mean`` / ``std`` are still fitted, for
        :meth:`as_global`).
    """

    mean: np.ndarray
    std: np.ndarray
    feature_names: tuple[str, ...]
    fit_end: int
    mode: str = "global"

    @classmethod
    def fit(cls, features: np.ndarray, fit_end: int, feature_names: tuple[str, ...],
            mode: str = "global") -> "Normalizer":
        """Fit on ``features[: fit_end + 1]`` (T, N, F).  Refuses a constant feature, naming it."""
        span = features[: fit_end + 1].astype(np.float64)  # (fit_end + 1, N, F)
        mean = span.mean(axis=(0, 1))  # (F,)
        std = span.std(axis=(0, 1))  # (F,)
        # A feature constant up to float32 rounding carries no information and would divide by ~0.
        for k, name in enumerate(feature_names):
            if std[k] <= 1e-6 * max(abs(mean[k]), 1e-6):
                raise DataError(
                    f"feature {name!r} is constant over the training span (dates index 0..{fit_end}; "
                    f"std {std[k]:.3g}, mean {mean[k]:.6g}): it cannot be standardised. Drop the column "
                    "or fix how it is computed."
                )
        if mode not in ("global", "cross_section"):
            raise DataError(f"unknown normalisation {mode!r}; data.normalize is global or cross_section.")
        return cls(mean, std, tuple(feature_names), int(fit_end), mode)

    def transform(self, features: np.ndarray) -> np.ndarray:
        """(..., N, F) -> standardised float32 (..., N, F) (global: any (..., F)).

        Raises DataError (cross_section) where a feature is the same for every factor on a date:
        it has no cross-section to standardise."""
        if self.mode == "global":
            return ((features - self.mean) / self.std).astype(np.float32)
        x = np.asarray(features, dtype=np.float64)
        std = x.std(axis=-2, keepdims=True)  # (..., 1, F)
        flat = std.reshape(-1, std.shape[-1])  # (dates, F)
        if (flat <= 1e-12).any():
            row, k = map(int, np.argwhere(flat <= 1e-12)[0])
            raise DataError(
                f"feature {self.feature_names[k]!r} is the same for every factor on {int((flat[:, k] <= 1e-12).sum())} "
                f"date(s) (the first at row {row} of the dates given), so data.normalize: cross_section cannot "
                "standardise it across the factors. Use data.normalize: global, or drop the column.")
        return ((x - x.mean(axis=-2, keepdims=True)) / std).astype(np.float32)

    def as_global(self) -> "Normalizer":
        """The same fit with the global transform (what the probe reads)."""
        return replace(self, mode="global")

    def to_dict(self) -> dict:
        """Plain dict (lists) for checkpoints; :meth:`from_dict` inverts it."""
        return {"mean": self.mean.tolist(), "std": self.std.tolist(),
                "feature_names": list(self.feature_names), "fit_end": self.fit_end, "mode": self.mode}

    @classmethod
    def from_dict(cls, d: dict) -> "Normalizer":
        """Inverse of :meth:`to_dict`; a checkpoint from before ``mode`` existed is global."""
        return cls(np.asarray(d["mean"], np.float64), np.asarray(d["std"], np.float64),
                   tuple(d["feature_names"]), int(d["fit_end"]), d.get("mode", "global"))


class WindowSource:
    """Normalised panel on one device; vectorised gathering of (input, targets) for decisions.

    Parameters
    ----------
    panel : Panel
    normalizer : Normalizer
    lookback, horizon : int
    device : str or torch.device
    """

    def __init__(self, panel: Panel, normalizer: Normalizer, lookback: int, horizon: int, device="cpu"):
        if normalizer.feature_names != panel.feature_names:
            raise DataError(
                f"normalizer features {normalizer.feature_names} differ from the panel's {panel.feature_names}."
            )
        self.panel, self.normalizer = panel, normalizer
        self.lookback, self.horizon = lookback, horizon
        self.n_dates = len(panel.dates)
        self.features = torch.as_tensor(normalizer.transform(panel.features), device=device)  # (T, N, F) f32
        self.returns = torch.tensor(panel.returns, dtype=torch.float32, device=device)  # (T, N), a copy
        r_h = np.nan_to_num(horizon_returns(panel.returns, horizon))  # (T, N), 0 where undefined
        self.horizon_returns = torch.as_tensor(r_h, dtype=torch.float32, device=device)  # (T, N)
        self._x_offsets = torch.arange(-lookback + 1, 1, device=device)  # (L,)
        self._y_offsets = torch.arange(1, horizon + 1, device=device)  # (h,)
        self.target_days, self.label_end = horizon, self.n_dates - 1
        self._train_target: torch.Tensor | None = None  # (T, N), set by set_train_target

    def set_train_target(self, days: int, label_end: int) -> None:
        """Make :meth:`train_target` the mean return of the next ``days`` days in horizon units
        (:func:`smoothed_horizon_returns`), reading no return after date index ``label_end`` (the
        training split's last label day).  ``training.target_days``; docs/quality.md, A30."""
        r = smoothed_horizon_returns(self.panel.returns, self.horizon, days, label_end)
        self._train_target = torch.as_tensor(np.nan_to_num(r), dtype=torch.float32, device=self.features.device)
        self.target_days, self.label_end = days, label_end

    def train_target(self, idx: torch.Tensor) -> torch.Tensor:
        """The return the training losses' return and Sharpe terms score, (B,) decisions -> (B, N):
        the horizon return unless :meth:`set_train_target` chose a longer span.  Refuses a decision
        whose horizon ends after the label end (such a target would be cut short)."""
        idx = idx.to(self.features.device)
        if self._train_target is None:
            return self.horizon_returns[idx]
        if idx.numel() and int(idx.max()) + self.horizon > self.label_end:
            raise ShapeError(
                f"train_target: decision {int(idx.max())} needs returns up to {int(idx.max()) + self.horizon}, after "
                f"the label end {self.label_end} (the training split's last label day)."
            )
        return self._train_target[idx]

    @property
    def first_decision(self) -> int:
        return self.lookback - 1

    @property
    def last_decision(self) -> int:
        return self.n_dates - 1 - self.horizon

    def _check(self, idx: torch.Tensor) -> None:
        if idx.ndim != 1 or idx.dtype != torch.long:
            raise ShapeError(f"gather needs a 1-D LongTensor of decision indices, got {tuple(idx.shape)} {idx.dtype}.")
        lo, hi = int(idx.min()), int(idx.max())
        if lo < self.first_decision or hi > self.last_decision:
            raise ShapeError(
                f"decision indices must lie in [{self.first_decision}, {self.last_decision}] (lookback "
                f"{self.lookback}, horizon {self.horizon}, T {self.n_dates}); got min {lo}, max {hi}."
            )

    def gather(self, idx: torch.Tensor, check: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Windows and targets for decisions ``idx`` (B,).

        Returns
        -------
        x : (B, L, N, F) float32, normalised features of dates t-L+1..t
        r_daily : (B, h, N) float32, returns of days t+1..t+h
        r_horizon : (B, N) float32, compounded return over t+1..t+h (computed in float64)
        """
        idx = idx.to(self.features.device)
        if check and idx.numel():
            self._check(idx)
        x = self.features[idx[:, None] + self._x_offsets]  # (B, L, N, F)
        r_daily = self.returns[idx[:, None] + self._y_offsets]  # (B, h, N)
        return x, r_daily, self.horizon_returns[idx]  # (B, N)


@dataclass(frozen=True, eq=False)
class PreparedData:
    """A validated panel with its splits and training-span normalizer."""

    panel: Panel
    splits: Splits
    normalizer: Normalizer
    data_cfg: DataConfig

    def window_source(self, device="cpu", target_days: int | None = None) -> WindowSource:
        """The windows on ``device``; ``target_days`` (``training.target_days``) sets the training
        target over that many days, cut at the training split's last label day."""
        d = self.data_cfg
        source = WindowSource(self.panel, self.normalizer, d.lookback_days, d.prediction_horizon, device)
        if target_days is not None:
            source.set_train_target(target_days, int(self.splits.train[-1]) + d.prediction_horizon)
        return source


def absolute_panel_path(data_cfg: DataConfig, panel_path: str | None = None) -> str | None:
    """``panel_path`` or ``data_cfg.panel_path`` made absolute from the current directory (None for
    the synthetic panel): Ray Tune runs each trial in its own directory, where a relative path would
    name another (missing) file."""
    path = panel_path if panel_path is not None else data_cfg.panel_path
    return None if path is None else str(Path(path).resolve())


def pin_panel(cfg: Config, panel_path: str | None = None) -> tuple[Config, str | None]:
    """The panel a run trains on, as an absolute path (``panel_path``, else ``data.panel_path``;
    None: the embedded synthetic panel), and ``cfg`` with ``data.panel_path`` set to it.

    The training entry points hand the pinned config to their workers, so every checkpoint names
    the panel it was trained on, ``--data`` included, and ``backtest`` / ``predict`` read that
    panel by default (:class:`ray_jobs.inference.EnsembleInputs` refuses another one).
    """
    path = absolute_panel_path(cfg.data, panel_path)
    return replace(cfg, data=replace(cfg.data, panel_path=path)), path


def load_panel(data_cfg: DataConfig, panel_path: str | None = None) -> Panel:
    """``panel_path``, else ``data_cfg.panel_path``, else the embedded synthetic panel; validated."""
    path = panel_path if panel_path is not None else data_cfg.panel_path
    if path is not None:
        return read_panel(path, data_cfg)
    from data.build_panel import FEATURE_NAMES
    from data.synthetic import load_synthetic_panel

    if data_cfg.num_features != len(FEATURE_NAMES):
        raise DataError(
            f"the embedded synthetic panel has {len(FEATURE_NAMES)} features but data.num_features = "
            f"{data_cfg.num_features}; set data.num_features: {len(FEATURE_NAMES)} or give data.panel_path."
        )
    panel = load_synthetic_panel(data_cfg.num_factors, data_cfg.synthetic_years)
    splits_for(len(panel.dates), data_cfg)  # the too-few-dates check, as for a file
    return panel


def prepare(cfg: Config, panel_path: str | None = None, splits: Splits | None = None) -> PreparedData:
    """Load and validate the panel, cut the purged splits, fit the normalizer on train only.

    ``splits`` replaces the config's single split (a walk-forward fold, :mod:`data.folds`); the
    normalizer is then fitted on that fold's train span.

    Raises
    ------
    DataError
        Any contract violation, too few dates, or a constant feature in the training span.
    """
    panel = load_panel(cfg.data, panel_path)
    if splits is None:
        splits = splits_for(len(panel.dates), cfg.data)
    elif int(splits.test[-1]) + cfg.data.prediction_horizon > len(panel.dates) - 1:
        raise DataError(
            f"the given splits end at decision {int(splits.test[-1])}, but the panel's {len(panel.dates)} dates "
            f"allow decisions up to {len(panel.dates) - 1 - cfg.data.prediction_horizon}: another panel?"
        )
    normalizer = Normalizer.fit(panel.features, int(splits.train[-1]), panel.feature_names, cfg.data.normalize)
    return PreparedData(panel, splits, normalizer, cfg.data)
