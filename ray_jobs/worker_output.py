"""What a training worker shows: one progress line per epoch on stdout, scalars in TensorBoard.

Ray Train V2's own per-report output is silenced here (:func:`quiet_report_log`): our progress
line carries the same numbers in one readable line.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from ray.train.v2._internal.execution import context as train_context
from tensorboardX import SummaryWriter


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


def open_writer(run_dir: Path, last_epoch: int) -> SummaryWriter:
    """The seed's TensorBoard writer; ``purge_step`` drops events a crashed attempt logged after its
    last checkpoint."""
    return SummaryWriter(str(Path(run_dir) / "tensorboard"), purge_step=last_epoch + 1)


def write_scalars(writer: SummaryWriter, metrics: dict, epoch: int) -> None:
    """Every numeric metric of the epoch (booleans such as ``should_stop`` are left out)."""
    for key, value in metrics.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            writer.add_scalar(key, value, epoch)
    writer.flush()
