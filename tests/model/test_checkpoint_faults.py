"""Checkpoint faults without Ray: a full disk, corrupt files on resume, the metric history."""

from __future__ import annotations

import errno
import hashlib
import io
import json
from pathlib import Path

import pytest
import torch

import model.checkpoint as checkpoint_module
from model.checkpoint import load_checkpoint, save_checkpoint
from core.config import load_config
from core.errors import CheckpointError, TrainingError
from model.network import XLSTMPortfolio
from ray_jobs.run_folder import (
    BEST, CHECKPOINT_FILE, LATEST, append_history, newest_good_checkpoint, read_history, trim_history,
)
from test_checkpoint import SMALL

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _cfg(*extra):
    return load_config(CONFIGS / "model_config_cpu_smoke.yaml", [*SMALL, *extra])


def _save(path: Path, model, cfg, epoch: int, best_epoch: int | None = None) -> Path:
    state = {"epoch": epoch, "best_val_sharpe": 0.1 * epoch, "best_epoch": best_epoch or epoch, "bad_epochs": 0}
    return save_checkpoint(path, model, cfg, epoch=epoch, seed=1, state=state)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class _FullDisk(io.FileIO):
    """A file on a disk that fills up after ``room`` bytes: a partial write, then ENOSPC."""

    room = 4096

    def write(self, data) -> int:
        left = self.room - self.tell()
        if len(data) > left:
            super().write(bytes(data)[:max(left, 0)])
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(data)


def test_full_disk_keeps_the_previous_latest_and_leaves_no_partial_file(tmp_path, monkeypatch):
    cfg = _cfg()
    model = XLSTMPortfolio.from_config(cfg)
    latest = _save(tmp_path / LATEST, model, cfg, epoch=1)
    before = _digest(latest)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)  # epoch 2's weights differ
    monkeypatch.setattr(checkpoint_module, "open", lambda p, mode: _FullDisk(p, mode.replace("b", "")), raising=False)
    with pytest.raises(CheckpointError, match=rf"could not write checkpoint {latest}: \[Errno {errno.ENOSPC}\] "
                                              r"No space left on device; the previous latest\.pt is unchanged"):
        _save(latest, model, cfg, epoch=2)
    monkeypatch.undo()
    assert _digest(latest) == before and load_checkpoint(latest)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [LATEST]  # the torn temp file is gone


def test_unwritable_folder_is_a_checkpoint_error(tmp_path):
    cfg = _cfg()
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(CheckpointError, match=r"could not write checkpoint .*a_file/latest\.pt: \[Errno \d+\]"):
        _save(blocker / LATEST, XLSTMPortfolio.from_config(cfg), cfg, epoch=1)


def _ray_copy(run_dir: Path, name: str, source: Path) -> Path:
    """What Ray keeps: checkpoint_<time>/checkpoint.pt, a copy of latest.pt at report time."""
    folder = run_dir / name
    folder.mkdir()
    (folder / CHECKPOINT_FILE).write_bytes(source.read_bytes())
    return folder / CHECKPOINT_FILE


def test_resume_skips_corrupt_checkpoints_and_takes_the_newest_good_one(tmp_path, capsys):
    cfg = _cfg()
    model = XLSTMPortfolio.from_config(cfg)
    latest = _save(tmp_path / LATEST, model, cfg, epoch=1)
    first = _ray_copy(tmp_path, "checkpoint_2026-11-25_10-00-00.000001", latest)
    _save(latest, model, cfg, epoch=2, best_epoch=1)
    second = _ray_copy(tmp_path, "checkpoint_2026-11-25_10-01-00.000001", latest)
    _save(latest, model, cfg, epoch=3, best_epoch=1)

    payload, path = newest_good_checkpoint(tmp_path, cfg, "cpu")
    assert (payload["epoch"], path) == (3, latest)

    latest.write_bytes(latest.read_bytes()[:1000])  # truncated
    second.write_bytes(b"\x00garbage" * 64)  # overwritten
    payload, path = newest_good_checkpoint(tmp_path, cfg, "cpu")
    assert (payload["epoch"], path) == (1, first)
    out = capsys.readouterr().out
    assert f"skipping unreadable checkpoint: {latest} is corrupt" in out
    assert f"skipping unreadable checkpoint: {second} is corrupt" in out
    assert f"resuming from the last good checkpoint {first} (epoch 1)" in out
    assert load_checkpoint(tmp_path / BEST)["epoch"] == 1  # epoch 1 was the best so far: it is best.pt

    first.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"every checkpoint of .* is unreadable.*Move the folder aside"):
        newest_good_checkpoint(tmp_path, cfg, "cpu")


def test_no_checkpoint_is_a_fresh_start_and_another_config_is_refused(tmp_path):
    cfg = _cfg()
    assert newest_good_checkpoint(tmp_path, cfg, "cpu") == (None, None)
    _save(tmp_path / LATEST, XLSTMPortfolio.from_config(cfg), cfg, epoch=1)
    with pytest.raises(TrainingError, match=r"latest\.pt belongs to an interrupted run of this seed with a different config"):
        newest_good_checkpoint(tmp_path, _cfg("training.learning_rate=0.5"), "cpu")


def test_history_rows_are_replaced_atomically_and_trimmed_to_the_resume_point(tmp_path):
    for epoch in (1, 2, 3):
        append_history(tmp_path, {"epoch": epoch, "loss": 1.0 / epoch})
    assert [r["epoch"] for r in read_history(tmp_path)] == [1, 2, 3]
    assert trim_history(tmp_path, 2) == 1  # epoch 3 was logged, its checkpoint was not
    assert [r["epoch"] for r in read_history(tmp_path)] == [1, 2]
    assert trim_history(tmp_path, 2) == 0
    append_history(tmp_path, {"epoch": 3, "loss": 0.3})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3]
    assert not list(tmp_path.glob(".*tmp"))
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    assert trim_history(fresh, 0) == 0 and read_history(fresh) == []
