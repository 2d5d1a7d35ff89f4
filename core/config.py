"""Typed, frozen configs and the one strict YAML loader.

A YAML file in ``configs/`` becomes a :class:`Config` through :func:`load_config`.  Unknown keys,
wrong types and inconsistent values raise :class:`ConfigError` naming the file, the key and the
value.  Every field below has a documented default unless the spec fixes it; the spec's own keys
(``model.encoder.*``, ``data.*``, ``training.*``) keep the names users already know.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from core.errors import ConfigError

CellType = Literal["sLSTM", "mLSTM"]


@dataclass(frozen=True)
class EncoderConfig:
    """xLSTM encoder (``model.encoder``)."""

    num_layers: int
    """Number of xLSTM blocks."""
    hidden_dim: int
    """Width of every block (the per-step projection of the factor panel maps to it)."""
    cell_types: tuple[CellType, ...]
    """Block type per layer, e.g. [sLSTM, sLSTM, mLSTM, mLSTM]; length == num_layers."""
    dropout: tuple[float, ...]
    """Dropout probability per layer, applied to that block's dropout modules; len == num_layers."""
    num_heads: int = 4
    """Heads of each sLSTM/mLSTM cell; must divide hidden_dim."""
    slstm_backend: Literal["auto", "cuda", "fast", "vanilla"] = "auto"
    """sLSTM kernel: auto = CUDA kernel on cuda, the fast pure-torch step elsewhere;
    vanilla = upstream pure-torch step (slow reference)."""
    conv1d_kernel_size: int = 4
    """Causal conv width inside the blocks (upstream default); at least 2."""
    layout: Literal["factorwise", "panel"] = "factorwise"
    """factorwise: one encoder shared by all factors reads each factor's own series (as patches of
    patch_days days), then a market context (mean over factors) is mixed in and shared heads give
    each factor's moments; panel: one Linear maps a day's N x F inputs to hidden_dim (the first
    design; memorises the training span, see docs/quality.md)."""
    patch_days: int = 5
    """factorwise: days per input token (the stack runs over lookback_days / patch_days tokens per
    factor); must divide data.lookback_days."""
    market_context: bool = True
    """factorwise: mix the market context (the mean over factors of their summaries, projected) into
    every factor's summary; false: each factor's moments come from its own series only (a study
    option, docs/quality.md A20)."""
    factor_mixing: Literal["mean", "attention"] = "mean"
    """factorwise, with market_context: how the factors' summaries inform each other. mean: the
    mean over factors, projected, is added to every factor; attention: one multi-head
    self-attention layer over the factors (num_heads heads, no position, so the model stays
    equivariant to the factors' order) is added instead, letting each factor weigh the others
    (a study option, docs/quality.md A32)."""
    activation_checkpointing: bool = False
    """Recompute each block's activations in the backward pass instead of storing them (less memory,
    about a third more compute); for the full-size model on a shared GPU."""


@dataclass(frozen=True)
class HeadsConfig:
    """Return and covariance heads (``model.heads``)."""

    cov_rank: int = 8
    """Rank k of the factor covariance Sigma = B B^T + diag(d)."""
    min_variance: float = 1e-6
    """Floor added to the idiosyncratic variances d (horizon-return units), keeps Sigma PD."""
    feature_skip: bool = False
    """True: mu adds a linear function, shared by the factors, of each factor's features on the
    decision date (the linear probe's inputs), in units of the horizon volatility and starting at
    zero: a path of num_features + 1 parameters that can learn the pooled linear rule but cannot memorise
    (docs/quality.md, A17)."""


@dataclass(frozen=True)
class ModelConfig:
    """``model`` section."""

    encoder: EncoderConfig
    """The xLSTM block stack."""
    heads: HeadsConfig = field(default_factory=HeadsConfig)


@dataclass(frozen=True)
class DataConfig:
    """``data`` section: panel shape, windows and time splits."""

    lookback_days: int
    """Days of history in one input window (dates <= t for a decision at t)."""
    prediction_horizon: int
    """Days t+1..t+horizon whose returns are the targets of a decision at t."""
    num_factors: int
    """Factor portfolios in the panel (104)."""
    num_features: int
    """Feature columns per factor (9)."""
    panel_path: Optional[str] = None
    """Parquet panel; null = the embedded deterministic synthetic panel."""
    train_fraction: float = 0.70
    """Share of decision dates in the training split (by time)."""
    val_fraction: float = 0.15
    """Share of decision dates in the validation split; the test split gets the rest."""
    purge_days: Optional[int] = None
    """Decision dates dropped between splits; null = prediction_horizon; must be >= horizon."""
    synthetic_years: int = 24
    """Length of the embedded synthetic panel in years of business days (>= 20)."""
    normalize: Literal["global", "cross_section"] = "global"
    """How the model's input features are standardised: global, each feature by its mean and std
    over the training span and all factors; cross_section, each feature on each date by its mean
    and std across the factors of that date (the date's own values only, so no look-ahead), which
    leaves out the level common to all factors (docs/quality.md, A29).  The probe of docs/data.md
    always reads the global standardisation, so that it stays the same reference."""


@dataclass(frozen=True)
class PortfolioConfig:
    """``portfolio`` section: the mean-variance layer."""

    constraint: Literal["long_only", "long_short"] = "long_only"
    """long_only: w >= 0 (and w <= max_weight); long_short: ||w||_1 <= leverage."""
    max_weight: Optional[float] = None
    """Upper bound per weight for long_only; null = none.  Must be >= 1/num_factors."""
    leverage: float = 2.0
    """Gross leverage limit ||w||_1 <= leverage for long_short (>= 1)."""
    risk_aversion: float = 1.0
    """gamma in  mu^T w - gamma w^T Sigma w - c ||w - w_prev||_1."""
    tc_rate: float = 0.0005
    """c: proportional transaction cost per unit of one-way turnover (5 bp)."""
    solver: Literal["cvxpylayers", "torch"] = "cvxpylayers"
    """cvxpylayers (diffcp, the reference) or torch (batched on-device solve, see docs)."""
    solve_method: Literal["ECOS", "Clarabel", "SCS"] = "ECOS"
    """Cone solver used by cvxpylayers (ECOS is accurate to ~1e-6; default SCS is loose)."""
    feasibility_tol: float = 1e-5
    """Tolerance of the checks of every solution (budget, bounds, leverage)."""


@dataclass(frozen=True)
class TrainingConfig:
    """``training`` section."""

    batch_size: int
    """Global batch (windows per optimiser step, split across num_workers)."""
    max_epochs: int
    """Upper bound on epochs; patience usually stops a seed earlier."""
    learning_rate: float
    """AdamW learning rate (peak of the schedule)."""
    device: Literal["cpu", "cuda", "mps"]
    """Refused at start when not available; never replaced by another device."""
    precision: Literal["float32", "bfloat16"] = "float32"
    """bfloat16 = bf16 autocast of the encoder and heads on cuda or cpu (not mps); the heads'
    outputs stay float32 and the portfolio layer always solves in float64."""
    compile: bool = False
    """torch.compile the encoder + heads as one graph (cuda or cpu, not mps); the portfolio layer
    stays eager.  A graph break or the recompile limit stops the run (CompileError)."""
    alpha_return: float = 1.0
    """Weight of the return loss (MSE of predicted vs realised horizon returns)."""
    beta_cov: float = 0.5
    """Weight of the covariance loss (Gaussian NLL of realised horizon returns under Sigma)."""
    gamma_sharpe: float = 2.0
    """Weight of minus the annualised Sharpe of the batch's realised portfolio returns."""
    lambda_tc: float = 0.0
    """Weight of the transaction-cost term (tc_rate x turnover against the previous weights)."""
    loss_scaling: Literal["gradient", "none"] = "gradient"
    """gradient: before the first epoch, scale each loss term so that its gradient has norm ~1
    (measured on 2 training batches, fixed for the run), so the weights above weigh comparable
    gradients; none: raw terms (the Sharpe term's gradient is then 100-1000x the others')."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    decision_gradient: Literal["mu_and_cov", "mu", "heads"] = "mu_and_cov"
    """What the losses on the portfolio weights (Sharpe, costs) train through the solve:
    mu_and_cov, both moments (end to end); mu, the expected returns only, Sigma then being trained
    by its own loss (beta_cov) alone (docs/quality.md, A15); heads, both moments' heads but not the
    encoder, which then learns from the return and covariance losses alone (A21; not with
    training.compile)."""
    return_loss: Literal["raw", "cross_section", "huber", "rank_ic"] = "raw"
    """What loss_return compares: raw, mu with the realised horizon returns; cross_section, both
    less their mean over the factors on each date.  The portfolio's budget makes the weights blind
    to a shift of mu common to all factors, and the date's common move is what a model can only
    fit by recognising the date (docs/quality.md, A18); huber, raw with the square replaced by its
    tangent beyond 2 % (model.losses.HUBER_DELTA), so a few large returns cannot dominate the
    gradient (A24); rank_ic, 1 - the mean over dates of the correlation of mu with the ranks of the
    realised returns across the factors (a differentiable information coefficient, blind to mu's
    scale, the date's common move and the size of large returns; A28)."""
    rank_ic_anchor: float = 0.0
    """Under return_loss rank_ic, the weight of the raw MSE (percent**2, ~2 for a zero forecast)
    added to loss_return: the rank term sets mu's ordering, this small squared error anchors mu's
    scale, which the portfolio layer reads as conviction and the rank term cannot see
    (docs/quality.md, A34).  0 = the rank term alone; must be 0 with any other return_loss."""
    cov_loss_mean: Literal["mu", "detached"] = "mu"
    """Where loss_cov's Gaussian NLL centres the realised returns: mu, the model's, so the NLL's
    Mahalanobis term e' Sigma^-1 e (e = r - mu) trains mu as well as Sigma; detached, at mu's value
    taken as a constant, so loss_cov trains Sigma only and mu learns from the return and decision
    losses (docs/quality.md, A22).  The term's value is the same either way."""
    input_noise: float = 0.0
    """Standard deviation of Gaussian noise added to the normalised input features of every
    training window at every step (0 = none); validation, backtests and prediction see the clean
    inputs.  Each window is seen a few times an epoch at most, and noise keeps the model from
    keying on its exact values (docs/quality.md, A14)."""
    target_days: Optional[int] = None
    """Days of realised return that the return loss and the batch Sharpe score, brought to the
    horizon (null = data.prediction_horizon, the seed's rule).  A longer span (e.g. 20) scores mu
    and the weights against the mean return of the next target_days days: under a persistent
    signal nearly the same expectation with horizon / target_days of the noise variance.  The
    covariance loss keeps the horizon return; no training target reads a return after the
    training split's last label day (docs/quality.md, A30)."""
    grad_clip_norm: float = 1.0
    """Global gradient-norm clip (the norm before clipping is logged)."""
    patience: int = 20
    """Epochs without a val_sharpe improvement > min_delta before a seed stops."""
    min_delta: float = 0.0
    """Smallest val_sharpe gain that counts as an improvement."""
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    """cosine decays to lr/10 over max_epochs (over the epochs after warmup_epochs, if any)."""
    warmup_epochs: int = 0
    """Linear learning-rate warm-up: epoch e <= warmup_epochs trains at learning_rate x e /
    (warmup_epochs + 1), then lr_schedule runs over the remaining epochs (docs/quality.md, A16)."""
    steps_per_epoch: Optional[int] = None
    """Cap on optimiser steps per epoch (null = one pass over the training windows)."""
    batch_dates: Literal["random", "blocks"] = "random"
    """random: each batch is batch_size training dates drawn at random (a fresh shuffle each
    epoch); blocks: each batch is batch_size consecutive rebalance dates one horizon apart from a
    random start, a stretch of batch_size x horizon days traded as the backtest trades it, so the
    batch Sharpe scores one stretch of time (docs/quality.md, A12).  An epoch of blocks has as
    many steps as an epoch of random dates."""
    output_dir: str = "runs/train"
    """Where `python train.py` writes a run: a folder (relative paths are resolved from the cwd) or a
    URI such as s3://BUCKET/runs."""


@dataclass(frozen=True)
class ResourcesConfig:
    """``resources`` section: what Ray reserves for each seed's training (not hyperparameters:
    the same model trains the same way with any of these; checkpoints record them, loading ignores them)."""

    num_workers: int = 1
    """Ray Train workers per seed (> 1 = data parallel; the global batch is split between them)."""
    cpus_per_worker: float = 1.0
    """CPUs reserved per Ray Train worker."""
    gpus_per_worker: float = 0.0
    """GPU fraction per worker, e.g. 0.2 packs 5 seeds on one GPU; > 0 exactly when training.device is cuda."""


@dataclass(frozen=True)
class EnsembleConfig:
    """``ensemble`` section: Ray Tune over seeds."""

    seeds: tuple[int, ...] = (42, 123, 456, 789, 1024)
    """One model per seed; the seed fixes initialisation and dropout streams."""
    name: str = "xlstm_ensemble"
    """Experiment name (stable, no timestamps: Tuner.restore needs it)."""
    storage_path: str = "runs/ensembles"
    """Experiment storage root: a folder (made absolute at start) or a URI such as s3://BUCKET/runs;
    a cluster of several nodes needs a URI or a shared mount."""
    max_concurrent: int = 0
    """Seeds run at once; 0 = as resources allow."""
    max_failures: int = 2
    """Retries of a failed seed from its last checkpoint."""
    combine: Literal["weights", "moments"] = "weights"
    """How the members become one portfolio: weights = the mean of the members' own (chained)
    portfolio weights; moments = one solve on the members' mean mu and mean Sigma.  Chosen on the
    val split (docs/quality.md)."""


@dataclass(frozen=True)
class Config:
    """The whole run: one section per concern."""

    model: ModelConfig
    data: DataConfig
    training: TrainingConfig
    portfolio: PortfolioConfig = field(default_factory=PortfolioConfig)
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)

    @property
    def purge_days(self) -> int:
        p = self.data.purge_days
        return self.data.prediction_horizon if p is None else p

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (lists, not tuples) that round-trips through :func:`config_from_dict`."""
        return _plain(dataclasses.asdict(self))


MOVED_KEYS = {f"training.{k}": f"resources.{k}" for k in ("num_workers", "cpus_per_worker", "gpus_per_worker")}
"""Keys that left a section: the loader names the new place (configs and checkpoints before the
resources section had them under training)."""


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


# --------------------------------------------------------------------------- strict building


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str, src: str) -> Any:
    origin = typing.get_origin(tp)
    bad = ConfigError(
        f"{src}: {where} = {value!r} has the wrong type; expected {_type_name(tp)}."
    )
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where, src)
            except ConfigError:
                pass
        raise bad
    if origin is Literal:
        if value in typing.get_args(tp) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{src}: {where} = {value!r} is not allowed; expected {_type_name(tp)}.")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise bad
        item = typing.get_args(tp)[0]
        return tuple(_coerce(v, item, f"{where}[{i}]", src) for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where, src)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    raise ConfigError(f"{src}: {where}: unsupported config type {tp!r} (a bug).")


def _build(cls: type, raw: Any, where: str, src: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{src}: {where or 'top level'} must be a mapping, got {raw!r}.")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        if key in MOVED_KEYS:
            raise ConfigError(
                f"{src}: '{key}' (value {raw[unknown[0]]!r}) has moved to '{MOVED_KEYS[key]}': Ray's "
                "reservations are not training hyperparameters. Move the key into the resources section."
            )
        raise ConfigError(
            f"{src}: unknown key '{key}' (value {raw[unknown[0]]!r}). "
            f"Known keys under '{where or 'top level'}': {', '.join(sorted(known))}. Check the spelling."
        )
    kwargs = {}
    for f in fields(cls):
        key = f"{where}.{f.name}" if where else f.name
        if f.name in raw:
            kwargs[f.name] = _coerce(raw[f.name], hints[f.name], key, src)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{src}: missing required key '{key}'.")
    return cls(**kwargs)


def _check(cond: bool, src: str, key: str, value: Any, rule: str) -> None:
    if not cond:
        raise ConfigError(f"{src}: {key} = {value!r} is invalid: {rule}.")


def validate(cfg: Config, src: str = "<config>") -> None:
    """Cross-field rules.  Raises ConfigError naming the key, the value and the fix."""
    enc, data, tr, pf = cfg.model.encoder, cfg.data, cfg.training, cfg.portfolio
    _check(enc.num_layers >= 1, src, "model.encoder.num_layers", enc.num_layers, "must be >= 1")
    _check(enc.hidden_dim >= 1, src, "model.encoder.hidden_dim", enc.hidden_dim, "must be >= 1")
    _check(
        len(enc.cell_types) == enc.num_layers, src, "model.encoder.cell_types", list(enc.cell_types),
        f"needs one entry per layer (num_layers = {enc.num_layers}, got {len(enc.cell_types)})",
    )
    _check(
        len(enc.dropout) == enc.num_layers, src, "model.encoder.dropout", list(enc.dropout),
        f"needs one entry per layer (num_layers = {enc.num_layers}, got {len(enc.dropout)})",
    )
    for i, p in enumerate(enc.dropout):
        _check(0.0 <= p < 1.0, src, f"model.encoder.dropout[{i}]", p, "must be in [0, 1)")
    _check(
        enc.num_heads >= 1 and enc.hidden_dim % enc.num_heads == 0, src, "model.encoder.num_heads",
        enc.num_heads, f"must divide hidden_dim = {enc.hidden_dim}",
    )
    _check(enc.conv1d_kernel_size >= 2, src, "model.encoder.conv1d_kernel_size", enc.conv1d_kernel_size,
           "must be >= 2 (upstream's causal conv returns an empty sequence for a width of 1)")
    inner = -(-2 * enc.hidden_dim // 64) * 64  # mLSTM's up-projection: 2 x hidden, rounded up to 64
    _check(
        "mLSTM" not in enc.cell_types or inner % enc.num_heads == 0, src, "model.encoder.num_heads",
        enc.num_heads, f"must divide the mLSTM inner width {inner} (2 x hidden_dim rounded up to a multiple of 64)",
    )
    _check(enc.patch_days >= 1, src, "model.encoder.patch_days", enc.patch_days, "must be >= 1")
    _check(
        enc.layout != "factorwise" or data.lookback_days % enc.patch_days == 0, src, "model.encoder.patch_days",
        enc.patch_days, f"must divide data.lookback_days = {data.lookback_days} (whole patches per window)",
    )
    _check(
        enc.layout == "factorwise" or enc.market_context, src, "model.encoder.market_context", enc.market_context,
        "applies to layout: factorwise only (the panel layout has no per-factor summaries); drop it or set it true",
    )
    _check(
        enc.factor_mixing == "mean" or (enc.layout == "factorwise" and enc.market_context), src,
        "model.encoder.factor_mixing", enc.factor_mixing,
        "applies to layout: factorwise with market_context: true only; drop it or set it to mean",
    )
    _check(cfg.model.heads.cov_rank >= 1, src, "model.heads.cov_rank", cfg.model.heads.cov_rank, "must be >= 1")
    _check(cfg.model.heads.min_variance > 0, src, "model.heads.min_variance", cfg.model.heads.min_variance, "must be > 0")
    for key in ("lookback_days", "prediction_horizon", "num_factors", "num_features"):
        _check(getattr(data, key) >= 1, src, f"data.{key}", getattr(data, key), "must be >= 1")
    _check(
        data.prediction_horizon < data.lookback_days, src, "data.prediction_horizon", data.prediction_horizon,
        f"must be shorter than data.lookback_days = {data.lookback_days} (the horizon must fit the lookback)",
    )
    _check(data.num_factors >= 2, src, "data.num_factors", data.num_factors, "a portfolio needs >= 2 factors")
    _check(0 < data.train_fraction < 1, src, "data.train_fraction", data.train_fraction, "must be in (0, 1)")
    _check(0 < data.val_fraction < 1, src, "data.val_fraction", data.val_fraction, "must be in (0, 1)")
    _check(
        data.train_fraction + data.val_fraction < 1, src, "data.val_fraction", data.val_fraction,
        f"train_fraction + val_fraction must leave room for a test split (train_fraction = {data.train_fraction})",
    )
    _check(
        cfg.purge_days >= data.prediction_horizon, src, "data.purge_days", data.purge_days,
        f"must be >= prediction_horizon = {data.prediction_horizon} so that no label overlaps the next split",
    )
    _check(data.synthetic_years >= 20, src, "data.synthetic_years", data.synthetic_years, "must be >= 20")
    for key in ("batch_size", "max_epochs"):
        _check(getattr(tr, key) >= 1, src, f"training.{key}", getattr(tr, key), "must be >= 1")
    _check(tr.batch_size >= 2, src, "training.batch_size", tr.batch_size, "the batch Sharpe needs >= 2 samples")
    _check(tr.learning_rate > 0, src, "training.learning_rate", tr.learning_rate, "must be > 0")
    _check(tr.grad_clip_norm > 0, src, "training.grad_clip_norm", tr.grad_clip_norm, "must be > 0")
    _check(tr.patience >= 1, src, "training.patience", tr.patience, "must be >= 1")
    for key in ("alpha_return", "beta_cov", "gamma_sharpe", "lambda_tc", "weight_decay", "min_delta", "input_noise"):
        _check(getattr(tr, key) >= 0, src, f"training.{key}", getattr(tr, key), "must be >= 0")
    # CPU runs both (the rehearsal of the GPU job: tests/ray_jobs/test_precision.py); MPS has never
    # been run with either here, and inductor's MPS backend is a prototype: refused, not tried.
    _check(
        tr.precision == "float32" or tr.device in ("cuda", "cpu"), src, "training.precision", tr.precision,
        f"bfloat16 autocast runs on cuda and cpu only, not on {tr.device!r} (this project has not run "
        "torch's MPS autocast); set training.precision=float32",
    )
    _check(
        not tr.compile or tr.device in ("cuda", "cpu"), src, "training.compile", tr.compile,
        f"torch.compile runs on cuda and cpu only, not on {tr.device!r} (inductor's MPS backend is a "
        "prototype in torch 2.13); set training.compile=false",
    )
    _check(
        not (tr.compile and tr.decision_gradient == "heads"), src, "training.decision_gradient", tr.decision_gradient,
        "runs the heads a second time outside the compiled graph; set training.compile=false with it, or "
        "choose mu_and_cov or mu",
    )
    _check(
        0 <= tr.warmup_epochs < tr.max_epochs, src, "training.warmup_epochs", tr.warmup_epochs,
        f"must be >= 0 and below max_epochs = {tr.max_epochs} (at least one epoch at the full rate)",
    )
    _check(
        tr.steps_per_epoch is None or tr.steps_per_epoch >= 1, src, "training.steps_per_epoch",
        tr.steps_per_epoch, "must be >= 1 or null",
    )
    _check(
        tr.rank_ic_anchor >= 0, src, "training.rank_ic_anchor", tr.rank_ic_anchor, "must be >= 0",
    )
    _check(
        tr.rank_ic_anchor == 0 or tr.return_loss == "rank_ic", src, "training.rank_ic_anchor",
        tr.rank_ic_anchor, f"anchors the rank_ic return loss only (return_loss = {tr.return_loss!r}); "
        "set training.return_loss=rank_ic or the anchor to 0",
    )
    _check(
        tr.target_days is None or tr.target_days >= data.prediction_horizon, src, "training.target_days",
        tr.target_days, f"must be null or >= data.prediction_horizon = {data.prediction_horizon}",
    )
    res = cfg.resources
    _check(res.num_workers >= 1, src, "resources.num_workers", res.num_workers, "must be >= 1")
    _check(res.cpus_per_worker > 0, src, "resources.cpus_per_worker", res.cpus_per_worker, "must be > 0")
    _check(res.gpus_per_worker >= 0, src, "resources.gpus_per_worker", res.gpus_per_worker, "must be >= 0")
    _check(
        res.gpus_per_worker == 0 or tr.device == "cuda", src, "resources.gpus_per_worker", res.gpus_per_worker,
        f"GPUs are only requested for training.device cuda (device = {tr.device!r})",
    )
    _check(
        tr.device != "cuda" or res.gpus_per_worker > 0, src, "resources.gpus_per_worker", res.gpus_per_worker,
        "training.device cuda needs a GPU share per worker, e.g. 1.0 or 0.2",
    )
    n = data.num_factors
    if pf.max_weight is not None:
        _check(
            pf.max_weight * n >= 1 - 1e-12, src, "portfolio.max_weight", pf.max_weight,
            f"max_weight * num_factors must be >= 1 or the budget is infeasible (>= {1 / n:.6f})",
        )
        _check(pf.max_weight <= 1, src, "portfolio.max_weight", pf.max_weight, "must be <= 1")
    _check(pf.leverage >= 1, src, "portfolio.leverage", pf.leverage, "must be >= 1 (1 = long-only budget)")
    _check(pf.risk_aversion > 0, src, "portfolio.risk_aversion", pf.risk_aversion, "must be > 0")
    _check(pf.tc_rate >= 0, src, "portfolio.tc_rate", pf.tc_rate, "must be >= 0")
    _check(pf.feasibility_tol > 0, src, "portfolio.feasibility_tol", pf.feasibility_tol, "must be > 0")
    ens = cfg.ensemble
    _check(len(ens.seeds) >= 1, src, "ensemble.seeds", list(ens.seeds), "needs at least one seed")
    _check(len(set(ens.seeds)) == len(ens.seeds), src, "ensemble.seeds", list(ens.seeds), "seeds must be distinct")
    _check(ens.max_concurrent >= 0, src, "ensemble.max_concurrent", ens.max_concurrent, "must be >= 0")
    _check(ens.max_failures >= 0, src, "ensemble.max_failures", ens.max_failures, "must be >= 0")
    _check(bool(ens.name) and "/" not in ens.name, src, "ensemble.name", ens.name, "must be a plain non-empty name")


# --------------------------------------------------------------------------- public API


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"training.device=cpu"`` -> (["training", "device"], "cpu").  The value is YAML."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set training.device=cpu.")
    key, _, raw = text.partition("=")
    path = [p for p in key.strip().split(".")]
    if not all(path):
        raise ConfigError(f"--set {text!r}: key {key!r} must be dotted names, e.g. training.device.")
    try:
        value = yaml.safe_load(raw) if raw.strip() else raw
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: value {raw!r} is not valid YAML ({exc}).") from None
    return path, value


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Apply ``--set key=value`` overrides to a raw (YAML) dict; returns a new dict."""
    out = copy.deepcopy(raw)
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for part in path[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {text!r}: '{part}' is a value, not a section.")
            node = nxt
        node[path[-1]] = value
    return out


def config_from_dict(raw: dict[str, Any], src: str = "<dict>") -> Config:
    """Build and validate a Config from a plain nested dict (e.g. one stored in a checkpoint)."""
    cfg = _build(Config, raw, "", src)
    validate(cfg, src)
    return cfg


def stored_config(raw: dict[str, Any], src: str) -> Config:
    """The Config a checkpoint recorded, as it was (no field rewritten for the loading machine).

    Checkpoints written before the ``resources`` section kept its keys under ``training``; they are
    moved to where they live now (:data:`MOVED_KEYS`), values unchanged.
    """
    raw = copy.deepcopy(raw)
    for old, new in MOVED_KEYS.items():
        (section, key), (to_section, to_key) = old.split("."), new.split(".")
        if key in raw.get(section, {}):
            raw.setdefault(to_section, {})[to_key] = raw[section].pop(key)
    return config_from_dict(raw, src)


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML config with ``yaml.safe_load``, apply ``--set`` overrides, build, validate."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist; see configs/ for the shipped ones.")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc}).") from None
    if raw is None:
        raise ConfigError(f"{path}: the file is empty.")
    src = str(path) + (f" (with --set {' '.join(overrides)})" if overrides else "")
    return config_from_dict(apply_overrides(raw, overrides), src)


def check_device(name: str, precision: str = "float32") -> str:
    """Refuse an unavailable device, or bfloat16 on a GPU without it.  Returns the torch device string.

    Never substitutes another device or precision.  Raises :class:`DeviceError` (a ConfigError)
    naming ``training.device`` / ``training.precision`` and the fix.
    """
    import torch

    from core.errors import DeviceError

    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceError(
            "training.device = 'cuda' but no CUDA GPU is available on this machine "
            f"(torch {torch.__version__}, cuda build {torch.version.cuda}). "
            "Run on a GPU node or pass --set training.device=cpu."
        )
    if name == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise DeviceError(
            "training.device = 'mps' but Apple MPS is not available on this machine. "
            "Run on an Apple-silicon Mac or pass --set training.device=cpu."
        )
    if name not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"training.device = {name!r} is unknown; use cpu, cuda or mps.")
    # Native support only: pre-Ampere GPUs emulate bfloat16 at a fraction of float32 speed.
    if name == "cuda" and precision == "bfloat16" and not torch.cuda.is_bf16_supported(including_emulation=False):
        raise DeviceError(
            f"training.precision = 'bfloat16' but this GPU ({torch.cuda.get_device_name()}, compute "
            f"capability {'.'.join(map(str, torch.cuda.get_device_capability()))}) has no bfloat16 support. "
            "Pass --set training.precision=float32 or run on an Ampere-or-newer GPU (A100, H100)."
        )
    return name
