"""A seed's run folder on disk: file names, metric history, failure and finished markers, checkpoints.

Layout of ``<storage>/seed_<seed>/`` (an ensemble puts its seeds under ``<experiment>/seeds/``)::

    latest.pt, best.pt       checkpoints written by rank 0 (model/checkpoint.py)
    checkpoint_*/checkpoint.pt   the copies Ray Train keeps (num_to_keep=2)
    metrics.jsonl            one row per finished epoch
    failed.json              a deterministic failure (type, message): restarts refuse at once
    finished.json            the finished run's summary: a finished seed is never overwritten
    tensorboard/             scalars per epoch

Every file here is replaced atomically (:mod:`core.files`), so a crash at any point leaves a
readable folder that the next attempt resumes from.  The folder may be local (a ``Path``: local
disk or a shared mount) or on an object store (a :class:`core.storage.RemotePath`, ``s3://...``):
every function here takes either, as a path, a string or a URI.
"""

from __future__ import annotations

import json
import tempfile
import uuid

from core import errors
from core.config import Config
from core.errors import CheckpointError, PortfolioTrainerError, TrainingError
from core.files import write_text_atomic
from core.storage import RemotePath, StoragePath, as_path
from model.checkpoint import copy_checkpoint, load_checkpoint
from ray_jobs.worker_output import say

SEEDS_DIR = "seeds"
"""An ensemble experiment's folder of seed run folders."""
CHECKPOINT_FILE = "checkpoint.pt"
LATEST, BEST, METRICS, FAILED, FINISHED = "latest.pt", "best.pt", "metrics.jsonl", "failed.json", "finished.json"


def seed_run_name(seed: int) -> str:
    """Stable run name (no timestamp): Ray restores a run by its name."""
    return f"seed_{seed}"


def ensure_writable(folder: StoragePath) -> StoragePath:
    """Create ``folder`` if needed and prove it takes a file, before any training starts."""
    folder = as_path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if isinstance(folder, RemotePath):
            probe = folder / f".write_check_{uuid.uuid4().hex[:8]}"
            write_text_atomic(probe, "")
            probe.unlink()
        else:
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".write_check_"):
                pass
    except OSError as exc:
        raise TrainingError(
            f"output folder {str(folder)!r} is not writable ({exc.strerror or exc}); "
            "choose another --output (or --storage) or fix its permissions (a bucket's: the credentials) / free disk space."
        ) from exc
    return folder


def _write_json(path: StoragePath, obj: dict) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2))


# --- metric history ---------------------------------------------------------------------------

def read_history(run_dir: StoragePath) -> list[dict]:
    """The per-epoch metric rows of ``metrics.jsonl`` (empty if none yet)."""
    path = as_path(run_dir) / METRICS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write_history(run_dir: StoragePath, rows: list[dict]) -> None:
    write_text_atomic(as_path(run_dir) / METRICS, "".join(json.dumps(r) + "\n" for r in rows))


def append_history(run_dir: StoragePath, metrics: dict) -> None:
    """Add one epoch's row; the file is replaced atomically, so no torn line survives a crash."""
    _write_history(run_dir, read_history(run_dir) + [metrics])


def trim_history(run_dir: StoragePath, last_epoch: int) -> int:
    """Drop rows of epochs after ``last_epoch`` (written before a crash, about to be redone)."""
    rows = read_history(run_dir)
    kept = [r for r in rows if r["epoch"] <= last_epoch]
    if len(kept) != len(rows):
        _write_history(run_dir, kept)
    return len(rows) - len(kept)


# --- failure markers --------------------------------------------------------------------------

def record_failure(run_dir: StoragePath, exc: PortfolioTrainerError) -> None:
    """Keep a deterministic failure's type and message for the driver and for restarted workers."""
    try:
        _write_json(as_path(run_dir) / FAILED, {"type": type(exc).__name__, "message": str(exc)})
    except OSError:  # e.g. the disk is full: the exception itself still reaches the driver
        pass


def read_failure(run_dir: StoragePath) -> PortfolioTrainerError | None:
    """The recorded failure of this seed as its typed exception, or None."""
    path = as_path(run_dir) / FAILED
    if not path.exists():
        return None
    info = json.loads(path.read_text())
    cls = getattr(errors, info.get("type", ""), None)
    if not (isinstance(cls, type) and issubclass(cls, PortfolioTrainerError)):
        cls = TrainingError
    return cls(info["message"])


def refuse_failed(run_dir: StoragePath) -> None:
    """A worker restarted after a deterministic failure stops at once instead of replaying it."""
    failure = read_failure(run_dir)
    if failure is not None:
        raise failure


def clear_failure(run_dir: StoragePath) -> None:
    """A new attempt of a seed that failed before: say so, and let its workers start."""
    failure = read_failure(run_dir)
    if failure is not None:
        print(f"{as_path(run_dir).name}: the previous attempt stopped with {type(failure).__name__}: {failure}; "
              "trying again from its last good checkpoint")
        (as_path(run_dir) / FAILED).unlink()


def seed_failure(run_dir: StoragePath, seed: int, fallback: Exception) -> PortfolioTrainerError:
    """The typed error a seed's workers recorded (SolverError, TrainingError, ...), else a
    TrainingError carrying Ray's report."""
    failure = read_failure(run_dir)
    if failure is None:
        return TrainingError(f"seed {seed} failed: {fallback}")
    return type(failure)(f"seed {seed}: {failure}")


def stop_note(run_dir: StoragePath) -> str:
    """What a stopped run leaves behind, for error messages."""
    last = as_path(run_dir) / LATEST
    return f"training stopped; the last good checkpoint is {last}" if last.exists() else \
        "training stopped before the first checkpoint"


# --- finished marker --------------------------------------------------------------------------

def write_finished(run_dir: StoragePath, summary: dict) -> None:
    _write_json(as_path(run_dir) / FINISHED, summary)


def read_finished(run_dir: StoragePath) -> dict:
    marker = as_path(run_dir) / FINISHED
    if not marker.exists():
        raise TrainingError(f"{run_dir} has no {FINISHED}: the run did not finish.")
    return json.loads(marker.read_text())


def refuse_finished(run_dir: StoragePath) -> None:
    """A finished run is never silently overwritten."""
    marker = as_path(run_dir) / FINISHED
    if marker.exists():
        info = json.loads(marker.read_text())
        raise TrainingError(
            f"{run_dir} already holds a finished run (best val_sharpe {info.get('best_val_sharpe'):.4f} "
            f"at epoch {info.get('best_epoch')}). Choose another --output, or delete that folder to retrain."
        )


# --- checkpoints ------------------------------------------------------------------------------

def checkpoint_candidates(run_dir: StoragePath) -> list[StoragePath]:
    """Every checkpoint of this seed on disk, newest first: ``latest.pt`` and the copies Ray keeps
    in ``checkpoint_*/`` (``ray.train.get_checkpoint()`` is one of those).

    Object stores keep times to the second: at equal times ``latest.pt`` (written before each
    epoch's copy, after the previous one) ranks first, then Ray's copies by their time-stamped names.
    """
    run_dir = as_path(run_dir)
    found = [p for p in [run_dir / LATEST, *run_dir.glob(f"checkpoint_*/{CHECKPOINT_FILE}")] if p.is_file()]
    return sorted(found, key=lambda p: (p.stat().st_mtime_ns, p.name == LATEST, str(p)), reverse=True)


def newest_good_checkpoint(run_dir: StoragePath, cfg: Config, device) -> tuple[dict | None, StoragePath | None]:
    """Load the newest readable checkpoint of this seed; a corrupt one is reported and skipped.

    Returns (None, None) when there is no checkpoint at all (a fresh start).  Raises
    CheckpointError when checkpoints exist but none can be read (never a silent restart from
    scratch), TrainingError when the checkpoint belongs to another config.
    """
    run_dir = as_path(run_dir)
    bad = []
    for path in checkpoint_candidates(run_dir):
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


def _align_best(run_dir: StoragePath, path: StoragePath, payload: dict) -> None:
    """After falling back past a corrupt checkpoint, ``best.pt`` may hold an epoch that is about
    to be redone; when the resumed checkpoint is itself the best so far, it becomes ``best.pt``."""
    state = payload["state"]
    best = run_dir / BEST
    if state["best_epoch"] == payload["epoch"] and path != best:
        copy_checkpoint(path, best)
    elif best.exists():
        say(f"WARNING: {best} may hold an epoch after the resume point (best so far: epoch "
            f"{state['best_epoch']}); a better epoch will replace it")
