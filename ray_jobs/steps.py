"""One training epoch and one validation pass; no Ray calls beyond the dataset shard iterator.

Validation scores the policy the way the backtest does: :func:`chain_solves` trades each rebalance
from the previous one's weights, :func:`data.scoring.score_weights` applies the conventions.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core.config import Config
from core.errors import DeviceError, SolverError, TrainingError
from data.scoring import score_weights
from data.splits import block_dates, rebalance_indices
from model.losses import compute_losses, term_weights
from model.network import solve_device
from ray_jobs.run_folder import stop_note

LOSS_KEYS = ("loss", "loss_return", "loss_cov", "loss_sharpe", "loss_tc")
VANISHING_GRADIENT = 1e-6
"""A term whose starting gradient norm is below this share of the largest term's cannot be scaled."""


@dataclass
class EpochStats:
    """Means over the epoch's steps (gradient_norm: before clipping)."""

    loss: float
    loss_return: float
    loss_cov: float
    loss_sharpe: float
    loss_tc: float
    gradient_norm: float  # mean over steps
    gradient_norm_median: float
    gradient_norm_max: float
    steps: int
    samples: int
    epoch_time_s: float
    samples_per_s: float
    data_wait_s: float
    data_wait_fraction: float


def make_optimizer(model: torch.nn.Module, cfg: Config):
    """AdamW at the config's rate; an optional linear warm-up, then cosine to lr/10 over the
    remaining epochs (stepped per epoch) or constant."""
    tr = cfg.training
    optimizer = torch.optim.AdamW(model.parameters(), lr=tr.learning_rate, weight_decay=tr.weight_decay)
    warm = tr.warmup_epochs
    if tr.lr_schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=tr.max_epochs - warm, eta_min=tr.learning_rate / 10
        )
    else:
        scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    if warm:  # epochs 1..warm at lr x e / (warm + 1), then the schedule above from the full rate
        ramp = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1 / (warm + 1), total_iters=warm)
        scheduler = torch.optim.lr_scheduler.SequentialLR(optimizer, [ramp, scheduler], milestones=[warm])
    return optimizer, scheduler


def autocast(cfg: Config, device: torch.device):
    """bf16 autocast on cuda or cpu when configured; the heads and the portfolio layer disable it
    for their float32 outputs and float64 solve.  bfloat16 elsewhere is refused, never ignored."""
    if cfg.training.precision == "float32":
        return contextlib.nullcontext()
    if device.type not in ("cuda", "cpu"):
        raise DeviceError(
            f"training.precision = {cfg.training.precision!r} on {device.type}: bf16 autocast runs on cuda "
            "and cpu only; set training.precision=float32."
        )
    return torch.autocast(device.type, dtype=torch.bfloat16)


def equal_weights(batch: int, n: int, device: torch.device) -> torch.Tensor:
    """Training trades from 1/N: shuffled windows have no previous portfolio of their own."""
    return torch.full((batch, n), 1.0 / n, dtype=torch.float64, device=device)  # (B, N)


def nonfinite_elements(**tensors: torch.Tensor) -> str:
    """Which batch elements hold NaN/inf, per named (B, ...) tensor: ``"; batch element(s) ..."``."""
    parts = []
    for name, t in tensors.items():
        bad = (~torch.isfinite(t.detach().float().flatten(1))).any(1).nonzero().flatten().tolist()
        if bad:
            parts.append(f"{name} at batch element(s) {bad[:8]}{' ...' if len(bad) > 8 else ''}")
    if not parts:
        return "; no batch element holds a NaN or inf: the loss itself overflowed"
    return "; non-finite " + ", ".join(parts)


def assert_finite(value: torch.Tensor, what: str, epoch: int, step: int, run_dir: Path, culprits: str = "") -> None:
    """Fail is fail: a NaN/inf stops the run; the last good checkpoint stays on disk."""
    if not torch.isfinite(value).all():
        raise TrainingError(
            f"non-finite {what} ({value.item() if value.numel() == 1 else value}) at epoch {epoch}, "
            f"step {step}{culprits}; {stop_note(run_dir)}. Lower training.learning_rate or check the data."
        )


def decision_path(tr) -> dict:
    """The model's keyword arguments for ``training.decision_gradient``: which parts the losses on
    the portfolio weights reach through the solve."""
    return {"cov_gradient": tr.decision_gradient != "mu", "encoder_gradient": tr.decision_gradient != "heads"}


def training_step(cfg: Config, fwd, optimizer, x, r_daily, r_horizon, epoch: int, step: int, run_dir: Path,
                  scales: dict | None = None, r_target=None):
    """Forward, loss, backward, clip, step.  Returns (loss terms as floats, grad norm before clipping).

    ``r_target`` (B, N): what the return and Sharpe terms score (``WindowSource.train_target``);
    None = ``r_horizon``.

    Raises SolverError (a failed solve) or TrainingError (a NaN/inf loss or gradient) naming the
    epoch, the step and the batch element; no update is applied then.
    """
    dev = solve_device(x.device)  # the CPU on MPS (no float64 there)
    w_prev = equal_weights(x.shape[0], cfg.data.num_factors, dev)
    if cfg.training.input_noise > 0:  # drawn from the seeded torch stream, as dropout is
        x = x + cfg.training.input_noise * torch.randn_like(x)
    try:
        with autocast(cfg, x.device):
            out = fwd(x, w_prev, **decision_path(cfg.training))
    except SolverError as exc:
        raise SolverError(f"epoch {epoch}, step {step}: {exc}; {stop_note(run_dir)}") from exc
    mu, cov_factor, cov_diag, r_daily, r_horizon = (
        t.to(dev) for t in (out.mu, out.cov_factor, out.cov_diag, r_daily, r_horizon)
    )
    losses = compute_losses(
        mu, cov_factor, cov_diag, out.weights, w_prev, r_horizon, r_daily,
        cfg.training, cfg.portfolio.tc_rate, cfg.data.prediction_horizon, scales,
        r_target=None if r_target is None else r_target.to(dev),
    )
    if not torch.isfinite(losses["loss"].detach()):
        culprits = nonfinite_elements(x=x, r_daily=r_daily, mu=mu, cov_factor=cov_factor, cov_diag=cov_diag,
                                      weights=out.weights)
        assert_finite(losses["loss"].detach(), "loss", epoch, step, run_dir, culprits)
    optimizer.zero_grad(set_to_none=True)
    losses["loss"].backward()
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.training.grad_clip_norm)
    assert_finite(grad_norm.detach(), "gradient norm", epoch, step, run_dir)
    optimizer.step()
    return {k: float(losses[k].detach()) for k in LOSS_KEYS}, float(grad_norm)


def gradient_scales(cfg: Config, model, source, indices: np.ndarray, batches: int = 2, seed: int = 0) -> dict:
    """Per-term multipliers that give each weighted loss term a gradient of norm ~1 at the start.

    The terms differ in gradient size by orders of magnitude (at initialisation the Sharpe term's
    gradient is 100-1000 times the return MSE's, because portfolio weights react to mu through
    Sigma^-1): unscaled, the seed's weights 1.0 / 0.5 / 2.0 would not mean what they say and the
    Sharpe term alone would drive training.  Measured once, on ``batches`` training batches drawn
    with ``seed``, in train mode; fixed for the run (stored in checkpoints).  A term with weight 0
    keeps the scale 1; a weighted term whose gradient vanishes at the start raises TrainingError
    (scaling it by 1 / ~0 would blow it up as soon as it moves).  The norms are taken over
    ``model.calibrated_parameters()`` (the ``feature_skip`` path is left out).
    """
    rng = np.random.default_rng(seed)
    tr, n = cfg.training, cfg.data.num_factors
    weights = term_weights(tr)
    params = model.calibrated_parameters()  # the deep model's, not the feature_skip path's
    norms: dict[str, list[float]] = {k: [] for k in weights}
    model.train()
    dev = solve_device(source.features.device)
    for _ in range(batches):
        idx = torch.as_tensor(rng.choice(indices, size=min(tr.batch_size, len(indices)), replace=False))
        x, r_daily, r_horizon = source.gather(idx.to(source.features.device))
        w_prev = equal_weights(x.shape[0], n, dev)
        out = model(x, w_prev, **decision_path(tr))  # the gradient training takes
        terms = compute_losses(out.mu.to(dev), out.cov_factor.to(dev), out.cov_diag.to(dev), out.weights, w_prev,
                               r_horizon.to(dev), r_daily.to(dev), tr, cfg.portfolio.tc_rate, cfg.data.prediction_horizon,
                               r_target=source.train_target(idx).to(dev))
        live = [k for k, w in weights.items() if w != 0.0]
        for i, key in enumerate(live):
            grads = torch.autograd.grad(terms[key], params, retain_graph=i < len(live) - 1, allow_unused=True)
            norms[key].append(float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads if g is not None))))
    model.zero_grad(set_to_none=True)
    means = {k: float(np.mean(v)) for k, v in norms.items() if v}
    largest = max(means.values(), default=0.0)
    for key, mean in means.items():
        if not np.isfinite(mean) or mean <= VANISHING_GRADIENT * largest:
            raise TrainingError(
                f"training.loss_scaling = gradient: the gradient of {key} at initialisation has norm {mean:.3g} "
                f"(the largest term's: {largest:.3g}), so it cannot be scaled to 1. A term with no gradient at "
                "the start (e.g. loss_tc with portfolio.tc_rate = 0, or a portfolio held at the cost kink "
                "w = w_prev) needs its weight set to 0, or training.loss_scaling: none."
            )
    return {key: 1.0 / means[key] if key in means else 1.0 for key in weights}


def per_worker_batch(cfg: Config, world: int) -> int:
    """Windows per step on each of ``world`` data-parallel workers (the global batch split)."""
    return max(2, cfg.training.batch_size // world)


def epoch_batches(shard, batch_size: int, shuffle_buffer: int, shuffle_seed: int | None):
    """This epoch's batches of the shard's rows ({"t": (B,) int64} or {"start": (B,) int64}),
    freshly shuffled by the seed."""
    return shard.iter_torch_batches(
        batch_size=batch_size, drop_last=True, dtypes=torch.int64,
        local_shuffle_buffer_size=shuffle_buffer, local_shuffle_seed=shuffle_seed,
    )


def step_dates(cfg: Config, shard, train: np.ndarray, world: int, shuffle_buffer: int, shuffle_seed: int | None):
    """This epoch's decision indices per step, (per_worker,) int64 tensors, from the worker's shard.

    ``training.batch_dates``: random, a batch of the shuffled decision indices the shard streams;
    blocks, one shuffled block start per step, expanded to the worker's batch of consecutive
    rebalance dates of ``train`` (:func:`data.splits.block_dates`).  An epoch of blocks stops after
    as many steps as an epoch of random dates has (``len(train) // global batch``).
    """
    per_worker = per_worker_batch(cfg, world)
    if cfg.training.batch_dates == "random":
        for batch in epoch_batches(shard, per_worker, shuffle_buffer, shuffle_seed):
            yield batch["t"]
        return
    h = cfg.data.prediction_horizon
    for step, batch in enumerate(epoch_batches(shard, 1, shuffle_buffer, shuffle_seed), start=1):
        yield torch.as_tensor(block_dates(train, int(batch["start"][0]), per_worker, h))
        if step >= max(1, len(train) // (per_worker * world)):
            return


def train_epoch(cfg: Config, fwd, model, optimizer, shard, source, epoch: int, world: int, run_dir: Path,
                shuffle_buffer: int, shuffle_seed: int | None = None, scales: dict | None = None,
                train: np.ndarray | None = None) -> EpochStats:
    """One pass over this worker's shard: freshly shuffled decision indices, or block starts
    (``training.batch_dates``; ``train``, the training split's decision indices, is then needed).

    ``shuffle_buffer``: the local shuffle buffer's size (the training split's length: a full shuffle).
    ``training.steps_per_epoch`` stops the pass early: a fresh random subset each epoch.
    """
    model.train()
    if cfg.training.batch_dates == "blocks" and train is None:
        raise ValueError("train_epoch: training.batch_dates = 'blocks' needs the training split (train=...).")
    sums = dict.fromkeys(LOSS_KEYS, 0.0)
    norms, samples, wait = [], 0, 0.0
    start = tick = time.perf_counter()
    for step, dates in enumerate(step_dates(cfg, shard, train, world, shuffle_buffer, shuffle_seed), start=1):
        x, r_daily, r_horizon = source.gather(dates.to(source.features.device))
        wait += time.perf_counter() - tick  # waiting on Ray Data + gathering the windows
        terms, norm = training_step(cfg, fwd, optimizer, x, r_daily, r_horizon, epoch, step, run_dir, scales,
                                    r_target=source.train_target(dates))
        for key in LOSS_KEYS:
            sums[key] += terms[key]
        norms.append(norm)
        samples += x.shape[0]
        tick = time.perf_counter()
        if cfg.training.steps_per_epoch and step >= cfg.training.steps_per_epoch:
            break
    elapsed = time.perf_counter() - start
    steps = len(norms)
    if steps == 0:
        raise TrainingError(
            f"epoch {epoch}: this worker received no full batch of {per_worker_batch(cfg, world)} training windows; "
            "lower training.batch_size or resources.num_workers."
        )
    return EpochStats(
        **{k: v / steps for k, v in sums.items()}, gradient_norm=float(np.mean(norms)),
        gradient_norm_median=float(np.median(norms)), gradient_norm_max=float(np.max(norms)), steps=steps,
        samples=samples, epoch_time_s=elapsed,
        samples_per_s=samples / elapsed, data_wait_s=wait, data_wait_fraction=wait / elapsed,
    )


@torch.no_grad()
def predict_moments(cfg: Config, model, source, indices: np.ndarray):
    """Encoder + heads over decision indices in batches (eval mode). Returns mu, B, d (K, ...)."""
    model.eval()
    parts = []
    for chunk in np.array_split(indices, max(1, int(np.ceil(len(indices) / cfg.training.batch_size)))):
        x, _, _ = source.gather(torch.as_tensor(np.array(chunk), dtype=torch.int64, device=source.features.device))
        with autocast(cfg, source.features.device):
            parts.append([t.float() for t in model.predict_moments(x)])
    return [torch.cat(ts) for ts in zip(*parts)]


def chain_solves(solve, mu: torch.Tensor, cov_factor: torch.Tensor, cov_diag: torch.Tensor, tc_rate: float):
    """Solve the rebalances in order, each trading from the previous target weights.

    ``solve(mu, cov_factor, cov_diag, w_prev) -> weights`` is a batched portfolio layer.  With no
    transaction cost the previous weights do not enter the problem, so one batched solve suffices.

    Returns (weights (K, N), w_prev (K, N)) float64 tensors.
    """
    k, n = mu.shape
    dtype = torch.float64
    w0 = torch.full((1, n), 1.0 / n, dtype=dtype, device=mu.device)
    if tc_rate == 0.0:
        weights = solve(mu, cov_factor, cov_diag, w0.expand(k, n)).to(dtype)  # (K, N)
        w_prev = torch.cat([w0, weights[:-1]], dim=0)  # (K, N)
        return weights, w_prev
    rows, prevs, prev = [], [], w0
    for i in range(k):
        w = solve(mu[i : i + 1], cov_factor[i : i + 1], cov_diag[i : i + 1], prev).to(dtype)  # (1, N)
        rows.append(w)
        prevs.append(prev)
        prev = w
    return torch.cat(rows), torch.cat(prevs)


@torch.no_grad()
def validate(cfg: Config, model, source, split_indices: np.ndarray, prefix: str = "val",
             scales: dict | None = None) -> dict:
    """Validation losses, Sharpe and turnover at non-overlapping rebalances, net of costs."""
    h = cfg.data.prediction_horizon
    idx = rebalance_indices(split_indices, h)
    dev = solve_device(source.features.device)
    mu, cov_factor, cov_diag = (t.to(dev) for t in predict_moments(cfg, model, source, idx))
    weights, w_prev = chain_solves(model.portfolio, mu, cov_factor, cov_diag, cfg.portfolio.tc_rate)
    _, r_daily, r_horizon = source.gather(torch.as_tensor(np.array(idx), dtype=torch.int64, device=source.features.device))
    r_daily, r_horizon = r_daily.to(dev), r_horizon.to(dev)
    losses = compute_losses(
        mu, cov_factor, cov_diag, weights, w_prev, r_horizon, r_daily,
        cfg.training, cfg.portfolio.tc_rate, h, scales,
    )
    result = score_weights(idx, weights.cpu().numpy(), w_prev.cpu().numpy(), r_horizon.cpu().numpy(), cfg.portfolio.tc_rate, h)
    out = {f"{prefix}_{k}": float(losses[k]) for k in LOSS_KEYS}
    out[f"{prefix}_sharpe_ratio"] = result.sharpe
    out[f"{prefix}_turnover"] = result.mean_turnover
    if prefix == "val":
        out["val_sharpe"] = result.sharpe  # Tune's metric (same number as val_sharpe_ratio)
    return out
