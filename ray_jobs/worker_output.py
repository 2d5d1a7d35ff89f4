"""What a training worker shows: one progress line per epoch on stdout, scalars in TensorBoard.

Ray Train V2's own per-report output is silenced here (:func:`quiet_report_log`): our progress
line carries the same numbers in one readable line.  TensorBoard event files go to the run
folder's ``tensorboard/`` (:class:`ScalarLog`), also when that folder is on an object store.
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
from pathlib import Path

from ray.train.v2._internal.execution import context as train_context
from tensorboardX import SummaryWriter

from core.files import copy_atomic
from core.storage import RemotePath, StoragePath, as_path


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
    logging.getLogger(train_context.__file__).setLevel(logging.WARNING)


def progress_line(seed: int, max_epochs: int, m: dict) -> str:
    return (
        f"[seed {seed}] epoch {m['epoch']}/{max_epochs}  loss {m['loss']:.4f} (sharpe term {m['loss_sharpe']:.3f})  "
        f"val_sharpe {m['val_sharpe']:+.3f}  best {m['best_val_sharpe']:+.3f}@{m['best_epoch']}  "
        f"turnover {m['val_turnover']:.3f}  grad {m['gradient_norm_median']:.3g} (median)  "
        f"{m['epoch_time_s']:.1f}s ({m['samples_per_s']:.0f} samples/s, data wait {100 * m['data_wait_fraction']:.1f}%)"
    )


class ScalarLog:
    """Rank 0's TensorBoard event files in ``<run_dir>/tensorboard``.

    An event file grows by appending, which an object store cannot do: for a run folder there, the
    writer writes to a local scratch folder and every event file is uploaded whole after each epoch
    (and at close).  ``purge_step`` drops events a crashed attempt logged after its last checkpoint.
    """

    def __init__(self, run_dir: StoragePath, last_epoch: int):
        self.target = as_path(run_dir) / "tensorboard"
        self._scratch = tempfile.mkdtemp(prefix="tensorboard_") if isinstance(self.target, RemotePath) else None
        self.writer = SummaryWriter(self._scratch or str(self.target), purge_step=last_epoch + 1)

    def write(self, metrics: dict, epoch: int) -> None:
        """Every numeric metric of the epoch (booleans such as ``should_stop`` are left out)."""
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(key, value, epoch)
        self.writer.flush()
        self._upload()

    def close(self) -> None:
        self.writer.close()
        self._upload()
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)

    def _upload(self) -> None:
        if self._scratch is not None:
            for event_file in sorted(Path(self._scratch).iterdir()):
                copy_atomic(event_file, self.target / event_file.name)
