"""The one atomic file write: a crash leaves the old file or the new one, never a torn one.

Every file the project replaces in place (checkpoints, panels, the metric history, run markers,
prediction files) goes through :func:`atomic_path`: the content is written to a temporary file in
the same folder (same file system, so the rename is atomic), flushed to disk, then moved over the
destination with ``os.replace``.  A failed write removes the temporary file and leaves the
destination untouched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on a clean exit it replaces ``path`` atomically.

    The caller writes the whole content to the yielded path (``torch.save``, ``pq.write_table``,
    ``Path.write_text``, ...).  Parent folders are created.  An exception inside the block leaves
    ``path`` as it was and no temporary file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # pid + random part: concurrent writers (two ranks, two processes) never share a temp file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        with open(tmp, "rb") as fh:  # the data must be on disk before the rename makes it visible
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.is_file():  # only left behind when the write failed
            tmp.unlink()


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Replace ``path`` with ``text`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def copy_atomic(source: str | Path, path: str | Path) -> Path:
    """Replace ``path`` with a copy of ``source`` atomically."""
    with atomic_path(path) as tmp:
        shutil.copyfile(source, tmp)
    return Path(path)
