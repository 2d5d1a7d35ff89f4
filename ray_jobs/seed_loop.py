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
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import ray.train
import torch

from core.config import Config, check_device, config_from_dict
from core.errors import CheckpointError, PortfolioTrainerError, TrainingError

CHECKPOINT_FILE = "checkpoint.pt"
LATEST, BEST, METRICS, FAILED, FINISHED = "latest.pt", "best.pt", "metrics.jsonl", "failed.json", "finished.json"


@dataclass
class SeedState:
    """What early stopping and resumption need besides the weights."""

    epoch: int = 0  # last finished epoch (0 = none)
    best_val_sharpe: float = -math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    loss_scales: dict | None = None  # per-term multipliers (training.loss_scaling), fixed for the run


def say(line: str) -> None:
    """One line to the worker's stdout, which Ray forwards to the driver once.

    Not ``print``: Train V2 patches a worker's ``print`` to go both to stdout and to its logger
    (stderr), and the driver then showed every progress line twice.
    """
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def quiet_report_log() -> None:
    """Silence Train V2's per-report INFO dump (every metric of every epoch, one huge line).

    Ray 2.60 names that logger after its file (``logging.getLogger(__file__)``), so
    ``LoggingConfig(log_level=...)``, which filters the ``ray.train`` loggers, misses it.  Warnings
    and errors still show; our own progress line (:func:`progress_line`) replaces the dump.
    """
    import logging

    from ray.train.v2._internal.execution import context

    logging.getLogger(context.__file__).setLevel(logging.WARNING)


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


def train_loop_per_worker(loop_config: dict) -> None:
    """Ray Train entry point.  ``loop_config``: config (dict), seed, run_dir, panel_path."""
    import ray.train.torch  # noqa: F401  (get_device / prepare_model)

    from data import prepare
    from model.network import XLSTMPortfolio
    from ray_jobs.steps import gradient_scales, make_optimizer

    quiet_report_log()
    cfg = config_from_dict(loop_config["config"], "<train loop config>")
    seed, run_dir = int(loop_config["seed"]), Path(loop_config["run_dir"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    refuse_failed(run_dir)
    device = worker_device(cfg)
    prepared = prepare(cfg, loop_config.get("panel_path"))
    source = prepared.window_source(device)
    seed_everything(seed)  # before the model is built: same init on every rank
    model = XLSTMPortfolio.from_config(cfg, device=device.type).to(device)
    optimizer, scheduler = make_optimizer(model, cfg)
    state = _restore(cfg, model, optimizer, scheduler, device, run_dir, rank)
    fwd = model
    if world > 1:
        fwd = ray.train.torch.prepare_model(model, move_to_device=False)
    if cfg.training.compile:
        fwd = torch.compile(fwd)
    writer = _writer(run_dir, state.epoch) if rank == 0 else None
    shard = ray.train.get_dataset_shard("train")
    try:
        if cfg.training.loss_scaling == "gradient" and state.loss_scales is None:
            state.loss_scales = gradient_scales(cfg, model, source, prepared.splits.train, seed=seed)
            if rank == 0:
                say(f"[seed {seed}] loss scales (gradient norm ~1 per term): "
                    + ", ".join(f"{k} {v:.3g}" for k, v in state.loss_scales.items()))
        _fit(cfg, seed, run_dir, rank, world, model, fwd, optimizer, scheduler, state, source, prepared, shard, writer,
             loop_config.get("fail_after_epoch"), int(loop_config.get("n_train", 100_000)),
             loop_config.get("nan_input_at"))
    except PortfolioTrainerError as exc:
        # Deterministic (a solver failure, a NaN, a refused checkpoint): a restart would replay the
        # same batches and fail again, so the restarted worker refuses at once (refuse_failed).
        record_failure(run_dir, exc)
        raise
    finally:
        if writer is not None:
            writer.close()


def _fit(cfg, seed, run_dir, rank, world, model, fwd, optimizer, scheduler, state, source, prepared, shard, writer,
         fail_after_epoch=None, n_train=100_000, nan_input_at=None):
    from ray_jobs.steps import train_epoch, validate

    tr = cfg.training
    stop_reason = "max_epochs"
    while state.epoch < tr.max_epochs:
        epoch = state.epoch + 1
        torch.manual_seed(seed * 100_003 + epoch)  # dropout stream: reproducible after a resume
        stats = train_epoch(cfg, fwd, model, optimizer, shard, source, epoch, world, run_dir,
                            shuffle_buffer=n_train, shuffle_seed=seed * 100_003 + epoch * 101 + rank,
                            nan_input_at=nan_input_at, scales=state.loss_scales)
        val = validate(cfg, model, source, prepared.splits.val, scales=state.loss_scales)
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
            say(progress_line(seed, tr.max_epochs, metrics))
        _report(cfg, seed, run_dir, rank, model, optimizer, scheduler, state, prepared, metrics, improved, writer)
        if stop:
            break
        _maybe_inject_failure(fail_after_epoch, epoch, run_dir)
    if rank == 0:
        _write_json(run_dir / FINISHED, {
            "seed": seed, "epochs_run": state.epoch, "best_val_sharpe": state.best_val_sharpe,
            "best_epoch": state.best_epoch, "stop_reason": stop_reason,
            "best_checkpoint": str(run_dir / BEST),
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
        f"turnover {m['val_turnover']:.3f}  grad {m['gradient_norm_median']:.3g} (median)  "
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
    """Rank 0 records the epoch, then every rank reports to Ray.

    Order matters for a crash at any point: the metric history is written first (atomically), then
    ``latest.pt`` (atomically).  A crash between the two leaves the history one epoch ahead of the
    checkpoint; the resumed worker trims it back (:func:`trim_history`) and redoes that epoch, so
    every epoch appears exactly once.
    """
    from model.checkpoint import save_checkpoint

    if rank != 0:
        ray.train.report(metrics)
        return
    payload = dict(
        optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), epoch=state.epoch, seed=seed,
        state=asdict(state), normalizer=prepared.normalizer.to_dict(),
        data_fingerprint=prepared.panel.fingerprint, metrics=metrics,
    )
    append_history(run_dir, metrics)
    save_checkpoint(run_dir / LATEST, model, cfg, **payload)
    if improved:
        save_checkpoint(run_dir / BEST, model, cfg, **payload)
    for key, value in metrics.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            writer.add_scalar(key, value, state.epoch)
    writer.flush()
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copyfile(run_dir / LATEST, Path(tmp) / CHECKPOINT_FILE)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def read_history(run_dir: Path) -> list[dict]:
    """The per-epoch metric rows of ``metrics.jsonl`` (empty if none yet)."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write_history(run_dir: Path, rows: list[dict]) -> None:
    _write_text(run_dir / METRICS, "".join(json.dumps(r) + "\n" for r in rows))


def append_history(run_dir: Path, metrics: dict) -> None:
    """Add one epoch's row; the file is replaced atomically, so no torn line survives a crash."""
    _write_history(run_dir, read_history(run_dir) + [metrics])


def trim_history(run_dir: Path, last_epoch: int) -> int:
    """Drop rows of epochs after ``last_epoch`` (written before a crash, about to be redone)."""
    rows = read_history(run_dir)
    kept = [r for r in rows if r["epoch"] <= last_epoch]
    if len(kept) != len(rows):
        _write_history(run_dir, kept)
    return len(rows) - len(kept)


def checkpoint_candidates(run_dir: Path) -> list[Path]:
    """Every checkpoint of this seed on disk, newest first: ``latest.pt`` and the copies Ray keeps
    in ``checkpoint_*/`` (``ray.train.get_checkpoint()`` is one of those)."""
    found = [p for p in [run_dir / LATEST, *run_dir.glob(f"checkpoint_*/{CHECKPOINT_FILE}")] if p.is_file()]
    return sorted(found, key=lambda p: p.stat().st_mtime_ns, reverse=True)


def newest_good_checkpoint(run_dir: Path, cfg: Config, device) -> tuple[dict | None, Path | None]:
    """Load the newest readable checkpoint of this seed; a corrupt one is reported and skipped.

    Returns (None, None) when there is no checkpoint at all (a fresh start).  Raises
    CheckpointError when checkpoints exist but none can be read (never a silent restart from
    scratch), TrainingError when the checkpoint belongs to another config.
    """
    from model.checkpoint import load_checkpoint

    candidates = checkpoint_candidates(run_dir)
    bad = []
    for path in candidates:
        try:
            payload = load_checkpoint(path, map_location=device)
        except CheckpointError as exc:
            say(f"WARNING: skipping unreadable checkpoint: {exc}")
            bad.append(str(exc))
            continue
        if payload["config"] != cfg.to_dict():
            raise TrainingError(
                f"{path} belongs to an interrupted run of this seed with a different config; "
                "resume it with the same config, or choose another output folder."
            )
        if bad:
            say(f"resuming from the last good checkpoint {path} (epoch {payload['epoch']})")
            _align_best(run_dir, path, payload)
        return payload, path
    if bad:
        raise CheckpointError(
            f"every checkpoint of {run_dir} is unreadable, so the run cannot resume: " + "; ".join(bad)
            + ". Move the folder aside to start this seed over."
        )
    return None, None


def _align_best(run_dir: Path, path: Path, payload: dict) -> None:
    """After falling back past a corrupt checkpoint, ``best.pt`` may hold an epoch that is about
    to be redone; when the resumed checkpoint is itself the best so far, it becomes ``best.pt``."""
    state = payload["state"]
    best = run_dir / BEST
    if state["best_epoch"] == payload["epoch"] and path != best:
        tmp = run_dir / f".{BEST}.tmp"
        shutil.copyfile(path, tmp)
        os.replace(tmp, best)
    elif best.exists():
        say(f"WARNING: {best} may hold an epoch after the resume point (best so far: epoch "
            f"{state['best_epoch']}); a better epoch will replace it")


def _restore(cfg, model, optimizer, scheduler, device, run_dir: Path, rank: int) -> SeedState:
    """Continue from the newest good checkpoint of this seed (a restarted worker, or a re-run of an
    interrupted seed), else start fresh.  Rank 0 trims the metric history to the resumed epoch."""
    from model.checkpoint import load_neutral_state_dict

    payload, path = newest_good_checkpoint(run_dir, cfg, device)
    if payload is None:
        if rank == 0:
            trim_history(run_dir, 0)
        return SeedState()
    load_neutral_state_dict(model, payload["model_state"])
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    state = SeedState(**payload["state"])
    if rank == 0:
        dropped = trim_history(run_dir, state.epoch)
        note = f"; dropped {dropped} metric row(s) of the unfinished epoch" if dropped else ""
        say(f"[seed {payload['seed']}] resuming after epoch {state.epoch} (best val_sharpe "
            f"{state.best_val_sharpe:.3f}) from {path}{note}")
    return state


def record_failure(run_dir: Path, exc: PortfolioTrainerError) -> None:
    """Keep a deterministic failure's type and message for the driver and for restarted workers."""
    try:
        _write_json(run_dir / FAILED, {"type": type(exc).__name__, "message": str(exc)})
    except OSError:  # e.g. the disk is full: the exception itself still reaches the driver
        pass


def read_failure(run_dir: Path) -> PortfolioTrainerError | None:
    """The recorded failure of this seed as its typed exception, or None."""
    from core import errors

    path = Path(run_dir) / FAILED
    if not path.exists():
        return None
    info = json.loads(path.read_text())
    cls = getattr(errors, info.get("type", ""), None)
    if not (isinstance(cls, type) and issubclass(cls, PortfolioTrainerError)):
        cls = TrainingError
    return cls(info["message"])


def refuse_failed(run_dir: Path) -> None:
    """A worker restarted after a deterministic failure stops at once instead of replaying it."""
    failure = read_failure(run_dir)
    if failure is not None:
        raise failure


def _writer(run_dir: Path, last_epoch: int):
    from tensorboardX import SummaryWriter

    # purge_step drops events a crashed attempt logged after its last checkpoint.
    return SummaryWriter(str(run_dir / "tensorboard"), purge_step=last_epoch + 1)


def _write_text(path: Path, text: str) -> None:
    """Replace ``path`` atomically: a crash leaves the old file or the new one, never a torn one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _write_json(path: Path, obj: dict) -> None:
    _write_text(path, json.dumps(obj, indent=2))


def stop_note(run_dir: Path) -> str:
    """What a stopped run leaves behind, for error messages."""
    last = Path(run_dir) / LATEST
    return f"training stopped; the last good checkpoint is {last}" if last.exists() else \
        "training stopped before the first checkpoint"


def assert_finite(value: torch.Tensor, what: str, epoch: int, step: int, run_dir: Path, culprits: str = "") -> None:
    """Fail is fail: a NaN/inf stops the run; the last good checkpoint stays on disk."""
    if not torch.isfinite(value).all():
        raise TrainingError(
            f"non-finite {what} ({value.item() if value.numel() == 1 else value}) at epoch {epoch}, "
            f"step {step}{culprits}; {stop_note(run_dir)}. Lower training.learning_rate or check the data."
        )
