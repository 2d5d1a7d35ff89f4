"""Per-worker training function of one seed, run by Ray Train's TorchTrainer.

Data design: every worker reads the Parquet panel once and holds it (normalised) on its device as
a :class:`data.WindowSource`.  Ray Data streams only the *decision indices* of the training split,
freshly shuffled each epoch and sharded across workers; the worker gathers the windows
``(B, lookback, n_factors, n_features)`` from the panel it holds.  A 250-day window is 0.9 MiB,
an index is 8 bytes, so nothing large crosses the object store.

The run folder (history, markers, checkpoint discovery) is :mod:`ray_jobs.run_folder`; one
epoch's steps are :mod:`ray_jobs.steps`; what the worker prints is :mod:`ray_jobs.worker_output`.
"""

from __future__ import annotations

import math
import random
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import ray.train
import ray.train.torch
import torch

from core.config import Config, check_device
from core.errors import PortfolioTrainerError
from core.storage import StoragePath, as_path
from data.splits import Splits
from data.windows import PreparedData, WindowSource, prepare
from model.checkpoint import copy_checkpoint, load_neutral_state_dict, save_checkpoint
from model.network import XLSTMPortfolio
from ray_jobs import run_folder
from ray_jobs.run_folder import BEST, CHECKPOINT_FILE, LATEST
from ray_jobs.steps import EpochStats, gradient_scales, make_optimizer, train_epoch, validate
from ray_jobs.worker_output import ScalarLog, progress_line, quiet_report_log, say


@dataclass(frozen=True)
class LoopSettings:
    """What one seed's workers are told, built once by the driver (``seed_run.build_trainer``) and
    passed as ``train_loop_config={"settings": LoopSettings(...)}``."""

    cfg: Config
    seed: int
    run_dir: StoragePath  # absolute path or URI: <storage>/seed_<seed>, the run folder (ray_jobs/run_folder.py)
    panel_path: str | None  # absolute Parquet path, or None for the embedded synthetic panel
    n_train: int  # training decisions: the local shuffle buffer holds all of them
    splits: Splits | None = None  # a walk-forward fold's train / val / test (data.folds); None: the config's


    def __post_init__(self):
        if not as_path(self.run_dir).is_absolute():
            raise ValueError(f"LoopSettings.run_dir must be absolute (got {self.run_dir}): Ray runs workers elsewhere.")
        if self.n_train < 1:
            raise ValueError(f"LoopSettings.n_train must be >= 1 (got {self.n_train}): no training decisions.")


@dataclass
class SeedState:
    """What early stopping and resumption need besides the weights."""

    epoch: int = 0  # last finished epoch (0 = none)
    best_val_sharpe: float = -math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    loss_scales: dict | None = None  # per-term multipliers (training.loss_scaling), fixed for the run


@dataclass
class WorkerRun:
    """One worker's share of a seed's run: everything an epoch uses besides the :class:`SeedState`."""

    settings: LoopSettings
    rank: int
    world: int
    device: torch.device
    prepared: PreparedData
    source: WindowSource
    model: XLSTMPortfolio
    fwd: torch.nn.Module  # the model, or its DDP wrapper (what the steps call)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    shard: object  # Ray Data's DataIterator of this worker's training indices
    writer: ScalarLog | None = None  # rank 0 only

    @property
    def cfg(self) -> Config:
        return self.settings.cfg


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def worker_device(cfg: Config) -> torch.device:
    """The configured device on this worker; refused by name if absent, never replaced."""
    name = check_device(cfg.training.device, cfg.training.precision)
    if name == "cuda":
        return ray.train.torch.get_device()
    return torch.device(name)


def train_loop_per_worker(train_loop_config: dict) -> None:
    """Ray Train entry point: ``train_loop_config = {"settings": LoopSettings}``."""
    settings: LoopSettings = train_loop_config["settings"]
    quiet_report_log()
    run_folder.refuse_failed(settings.run_dir)
    run, state = start_worker(settings)
    try:
        if run.cfg.training.loss_scaling == "gradient" and state.loss_scales is None:
            state.loss_scales = gradient_scales(run.cfg, run.model, run.source, run.prepared.splits.train,
                                                seed=settings.seed)
            if run.rank == 0:
                say(f"[seed {settings.seed}] loss scales (gradient norm ~1 per term): "
                    + ", ".join(f"{k} {v:.3g}" for k, v in state.loss_scales.items()))
        fit(run, state)
    except PortfolioTrainerError as exc:
        # Deterministic (a solver failure, a NaN, a refused checkpoint): a restart would replay the
        # same batches and fail again, so the restarted worker refuses at once (refuse_failed).
        run_folder.record_failure(settings.run_dir, exc)
        raise
    finally:
        if run.writer is not None:
            run.writer.close()


def start_worker(settings: LoopSettings) -> tuple[WorkerRun, SeedState]:
    """Panel on the device, the model (same initial weights on every rank) restored from the newest
    good checkpoint, optimizer, data shard, and rank 0's TensorBoard writer."""
    cfg = settings.cfg
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = worker_device(cfg)
    prepared = prepare(cfg, settings.panel_path, splits=settings.splits)
    source = prepared.window_source(device, cfg.training.target_days)
    seed_everything(settings.seed)  # before the model is built: same init on every rank
    model = XLSTMPortfolio.from_config(cfg, device=device.type).to(device)
    optimizer, scheduler = make_optimizer(model, cfg)
    run = WorkerRun(settings, rank, world, device, prepared, source, model,
                    fwd=model, optimizer=optimizer, scheduler=scheduler, shard=None)
    state = restore(run)  # before DDP wraps the model
    if world > 1:
        run.fwd = ray.train.torch.prepare_model(model, move_to_device=False)
    if cfg.training.compile:
        model.compile_moments()  # encoder + heads, one graph; the portfolio solve stays eager
    if rank == 0:
        run.writer = ScalarLog(settings.run_dir, state.epoch)
    run.shard = ray.train.get_dataset_shard("train")
    return run, state


def fit(run: WorkerRun, state: SeedState) -> None:
    """Epochs until max_epochs or patience; rank 0 then writes ``finished.json``."""
    tr, seed = run.cfg.training, run.settings.seed
    stop_reason = "max_epochs"
    while state.epoch < tr.max_epochs:
        epoch = state.epoch + 1
        torch.manual_seed(seed * 100_003 + epoch)  # dropout stream: reproducible after a resume
        stats = train_epoch(run.cfg, run.fwd, run.model, run.optimizer, run.shard, run.source, epoch, run.world,
                            run.settings.run_dir, shuffle_buffer=run.settings.n_train,
                            shuffle_seed=seed * 100_003 + epoch * 101 + run.rank, scales=state.loss_scales,
                            train=run.prepared.splits.train)
        val = validate(run.cfg, run.model, run.source, run.prepared.splits.val, scales=state.loss_scales)
        run.scheduler.step()
        improved = val["val_sharpe"] > state.best_val_sharpe + tr.min_delta
        if improved:
            state.best_val_sharpe, state.best_epoch, state.bad_epochs = val["val_sharpe"], epoch, 0
        else:
            state.bad_epochs += 1
        state.epoch = epoch
        stop = state.bad_epochs >= tr.patience
        if stop:
            stop_reason = f"patience ({tr.patience} epochs without a val_sharpe gain)"
        metrics = epoch_metrics(stats, val, state, run.optimizer, stop)
        if run.device.type == "cuda":  # this seed's share of a packed GPU (benchmarks/gpu_check.sh)
            metrics["peak_device_mib"] = torch.cuda.max_memory_allocated(run.device) / 2**20
        if run.rank == 0:
            say(progress_line(seed, tr.max_epochs, metrics))
        report_epoch(run, state, metrics, improved)
        if stop:
            break
    if run.rank == 0:
        run_dir = run.settings.run_dir
        run_folder.write_finished(run_dir, {
            "seed": seed, "epochs_run": state.epoch, "best_val_sharpe": state.best_val_sharpe,
            "best_epoch": state.best_epoch, "stop_reason": stop_reason, "best_checkpoint": str(run_dir / BEST),
        })


def epoch_metrics(stats: EpochStats, val: dict, state: SeedState, optimizer, stop: bool) -> dict:
    out = {"epoch": state.epoch, **asdict(stats), **val}
    out.update(
        learning_rate=optimizer.param_groups[0]["lr"],
        best_val_sharpe=state.best_val_sharpe, best_epoch=state.best_epoch,
        epochs_without_improvement=state.bad_epochs, should_stop=stop,
    )
    return out


def report_epoch(run: WorkerRun, state: SeedState, metrics: dict, improved: bool) -> None:
    """Rank 0 records the epoch, then every rank reports to Ray.

    Order matters for a crash at any point: the metric history is written first (atomically), then
    ``latest.pt`` (atomically).  A crash between the two leaves the history one epoch ahead of the
    checkpoint; the resumed worker trims it back (``run_folder.trim_history``) and redoes that
    epoch, so every epoch appears exactly once.  The checkpoint is serialised once, into the local
    folder Ray keeps as its own copy, and copied from there to ``latest.pt`` (and ``best.pt``), on
    local disk or an object store alike.
    """
    if run.rank != 0:
        ray.train.report(metrics)
        return
    run_dir = run.settings.run_dir
    payload = dict(
        optimizer=run.optimizer.state_dict(), scheduler=run.scheduler.state_dict(), epoch=state.epoch,
        seed=run.settings.seed, state=asdict(state), normalizer=run.prepared.normalizer.to_dict(),
        data_fingerprint=run.prepared.panel.fingerprint, metrics=metrics,
    )
    run_folder.append_history(run_dir, metrics)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = save_checkpoint(Path(tmp) / CHECKPOINT_FILE, run.model, run.cfg, **payload)
        copy_checkpoint(checkpoint, run_dir / LATEST)
        if improved:
            copy_checkpoint(checkpoint, run_dir / BEST)
        run.writer.write(metrics, state.epoch)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def restore(run: WorkerRun) -> SeedState:
    """Continue from the newest good checkpoint of this seed (a restarted worker, or a re-run of an
    interrupted seed), else start fresh.  Rank 0 trims the metric history to the resumed epoch."""
    run_dir = run.settings.run_dir
    payload, path = run_folder.newest_good_checkpoint(run_dir, run.cfg, run.device)
    if payload is None:
        if run.rank == 0:
            run_folder.trim_history(run_dir, 0)
        return SeedState()
    load_neutral_state_dict(run.model, payload["model_state"])
    run.optimizer.load_state_dict(payload["optimizer"])
    run.scheduler.load_state_dict(payload["scheduler"])
    state = SeedState(**payload["state"])
    if run.rank == 0:
        dropped = run_folder.trim_history(run_dir, state.epoch)
        note = f"; dropped {dropped} metric row(s) of the unfinished epoch" if dropped else ""
        say(f"[seed {payload['seed']}] resuming after epoch {state.epoch} (best val_sharpe "
            f"{state.best_val_sharpe:.3f}) from {path}{note}")
    return state
