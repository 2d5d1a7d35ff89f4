"""Per-worker training function of one seed, run by Ray Train's TorchTrainer.

Data design: every worker reads the Parquet panel once and holds it (normalised) on its device as
a :class:`data.WindowSource`.  Ray Data streams only the *decision indices* of the training split,
freshly shuffled each epoch and sharded across workers; the worker gathers the windows
``(B, lookback, n_factors, n_features)`` from the panel it holds.  A 250-day window is 0.9 MiB,
an index is 8 bytes, so nothing large crosses the object store.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import ray.train
import torch

from model.config import Config, check_device, config_from_dict
from model.errors import TrainingError

CHECKPOINT_FILE = "checkpoint.pt"


@dataclass
class SeedState:
    """What early stopping and resumption need besides the weights."""

    epoch: int = 0  # last finished epoch (0 = none)
    best_val_sharpe: float = -math.inf
    best_epoch: int = 0
    bad_epochs: int = 0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def worker_device(cfg: Config) -> torch.device:
    """The configured device on this worker; refused by name if absent, never replaced."""
    name = check_device(cfg.training.device)
    if name == "cuda":
        return ray.train.torch.get_device()
    return torch.device(name)


def train_loop_per_worker(loop_config: dict) -> None:
    """Ray Train entry point.  ``loop_config``: config (dict), seed, run_dir, panel_path."""
    import ray.train.torch  # noqa: F401  (get_device / prepare_model)

    from data import prepare
    from model.network import XLSTMPortfolio
    from ray_jobs.steps import make_optimizer

    cfg = config_from_dict(loop_config["config"], "<train loop config>")
    seed, run_dir = int(loop_config["seed"]), Path(loop_config["run_dir"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = worker_device(cfg)
    prepared = prepare(cfg, loop_config.get("panel_path"))
    source = prepared.window_source(device)
    seed_everything(seed)  # before the model is built: same init on every rank
    model = XLSTMPortfolio(cfg, device=device.type).to(device)
    optimizer, scheduler = make_optimizer(model, cfg)
    state = _restore(cfg, model, optimizer, scheduler, device, loop_config.get("resume_from"))
    fwd = model
    if world > 1:
        fwd = ray.train.torch.prepare_model(model, move_to_device=False)
    if cfg.training.compile:
        fwd = torch.compile(fwd)
    writer = _writer(run_dir, state.epoch) if rank == 0 else None
    shard = ray.train.get_dataset_shard("train")
    try:
        _fit(cfg, seed, run_dir, rank, world, model, fwd, optimizer, scheduler, state, source, prepared, shard, writer,
             loop_config.get("fail_after_epoch"), int(loop_config.get("n_train", 100_000)))
    finally:
        if writer is not None:
            writer.close()


def _fit(cfg, seed, run_dir, rank, world, model, fwd, optimizer, scheduler, state, source, prepared, shard, writer,
         fail_after_epoch=None, n_train=100_000):
    from ray_jobs.steps import train_epoch, validate

    tr = cfg.training
    stop_reason = "max_epochs"
    while state.epoch < tr.max_epochs:
        epoch = state.epoch + 1
        torch.manual_seed(seed * 100_003 + epoch)  # dropout stream: reproducible after a resume
        stats = train_epoch(cfg, fwd, model, optimizer, shard, source, epoch, world, run_dir,
                            shuffle_buffer=n_train, shuffle_seed=seed * 100_003 + epoch * 101 + rank)
        val = validate(cfg, model, source, prepared.splits.val)
        scheduler.step()
        improved = val["val_sharpe"] > state.best_val_sharpe + tr.min_delta
        if improved:
            state.best_val_sharpe, state.best_epoch, state.bad_epochs = val["val_sharpe"], epoch, 0
        else:
            state.bad_epochs += 1
        state.epoch = epoch
        stop = state.bad_epochs >= tr.patience
        if stop:
            stop_reason = f"patience ({tr.patience} epochs without a val_sharpe gain)"
        metrics = _metrics(stats, val, state, optimizer, stop)
        if rank == 0:
            print(progress_line(seed, tr.max_epochs, metrics), flush=True)
        _report(cfg, seed, run_dir, rank, model, optimizer, scheduler, state, prepared, metrics, improved, writer)
        if stop:
            break
        _maybe_inject_failure(fail_after_epoch, epoch, run_dir)
    if rank == 0:
        _write_json(run_dir / "finished.json", {
            "seed": seed, "epochs_run": state.epoch, "best_val_sharpe": state.best_val_sharpe,
            "best_epoch": state.best_epoch, "stop_reason": stop_reason,
            "best_checkpoint": str(run_dir / "best.pt"),
        })


def _maybe_inject_failure(fail_after_epoch, epoch: int, run_dir: Path) -> None:
    """Test hook (set only from code, never from a config): crash once after an epoch's checkpoint."""
    marker = run_dir / ".failure_injected"
    if fail_after_epoch == epoch and not marker.exists():
        marker.touch()
        raise RuntimeError(f"injected failure after epoch {epoch} (test hook)")


def progress_line(seed: int, max_epochs: int, m: dict) -> str:
    return (
        f"[seed {seed}] epoch {m['epoch']}/{max_epochs}  loss {m['loss']:.4f} (sharpe term {m['loss_sharpe']:.3f})  "
        f"val_sharpe {m['val_sharpe']:+.3f}  best {m['best_val_sharpe']:+.3f}@{m['best_epoch']}  "
        f"turnover {m['val_turnover']:.3f}  grad {m['gradient_norm']:.3g}  "
        f"{m['epoch_time_s']:.1f}s ({m['samples_per_s']:.0f} samples/s, data wait {100 * m['data_wait_fraction']:.1f}%)"
    )


def _metrics(stats, val: dict, state: SeedState, optimizer, stop: bool) -> dict:
    out = {"epoch": state.epoch, **asdict(stats), **val}
    out.update(
        learning_rate=optimizer.param_groups[0]["lr"],
        best_val_sharpe=state.best_val_sharpe, best_epoch=state.best_epoch,
        epochs_without_improvement=state.bad_epochs, should_stop=stop,
    )
    return out


def _report(cfg, seed, run_dir, rank, model, optimizer, scheduler, state, prepared, metrics, improved, writer):
    """Rank 0 writes latest (and best) atomically, then every rank reports to Ray."""
    from model.checkpoint import save_checkpoint

    if rank != 0:
        ray.train.report(metrics)
        return
    payload = dict(
        optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), epoch=state.epoch, seed=seed,
        state=asdict(state), normalizer=prepared.normalizer.to_dict(),
        data_fingerprint=prepared.panel.fingerprint, metrics=metrics,
    )
    save_checkpoint(run_dir / "latest.pt", model, cfg, **payload)
    if improved:
        save_checkpoint(run_dir / "best.pt", model, cfg, **payload)
    for key, value in metrics.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            writer.add_scalar(key, value, state.epoch)
    writer.flush()
    with open(run_dir / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps(metrics) + "\n")
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copyfile(run_dir / "latest.pt", Path(tmp) / CHECKPOINT_FILE)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def _restore(cfg, model, optimizer, scheduler, device, resume_from=None) -> SeedState:
    """Resume from Ray's latest checkpoint (a restarted worker), else from ``resume_from`` (the
    last checkpoint of an earlier, interrupted run of this seed), else start fresh."""
    from model.checkpoint import load_checkpoint, load_neutral_state_dict

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            payload = load_checkpoint(Path(folder) / CHECKPOINT_FILE, map_location=device)
    elif resume_from:
        payload = load_checkpoint(resume_from, map_location=device)
        if payload["config"] != cfg.to_dict():
            raise TrainingError(
                f"{resume_from} belongs to an interrupted run of this seed with a different config; "
                "resume it with the same config, or choose another output folder."
            )
    else:
        return SeedState()
    load_neutral_state_dict(model, payload["model_state"])
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    state = SeedState(**payload["state"])
    print(f"[seed {payload['seed']}] resuming after epoch {state.epoch} (best val_sharpe {state.best_val_sharpe:.3f})")
    return state


def _writer(run_dir: Path, last_epoch: int):
    from tensorboardX import SummaryWriter

    # purge_step drops events a crashed attempt logged after its last checkpoint.
    return SummaryWriter(str(run_dir / "tensorboard"), purge_step=last_epoch + 1)


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def assert_finite(value: torch.Tensor, what: str, epoch: int, step: int, run_dir: Path) -> None:
    """Fail is fail: a NaN/inf stops the run; the last good checkpoint stays on disk."""
    if not torch.isfinite(value).all():
        last = run_dir / "latest.pt"
        kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written yet"
        raise TrainingError(
            f"non-finite {what} ({value.item() if value.numel() == 1 else value}) at epoch {epoch}, "
            f"step {step}; training stopped, {kept}. Lower training.learning_rate or check the data."
        )
