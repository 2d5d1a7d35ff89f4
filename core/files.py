"""The one atomic file write: a crash leaves the old file or the new one, never a torn one.

Every file the project replaces in place (checkpoints, panels, the metric history, run markers,
prediction files, reports) goes through :func:`atomic_path`.  On local disk (or a shared mount) the
content is written to a temporary file in the same folder (same file system, so the rename is
atomic), flushed to disk, then moved over the destination with ``os.replace``.  On an object store
(:class:`core.storage.RemotePath`) it is written to a local temporary file, then uploaded as one
object, which the store shows only once complete.  A failed write removes the temporary file and
leaves the destination untouched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Iterator, Union

from core.storage import RemotePath, StoragePath, as_path

PathLike = Union[str, Path, RemotePath]


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a local temporary path; on a clean exit it replaces ``path`` atomically.

    The caller writes the whole content to the yielded path (``torch.save``, ``pq.write_table``,
    ``Path.write_text``, ...).  Parent folders are created.  An exception inside the block leaves
    ``path`` as it was and no temporary file behind.
    """
    path = as_path(path)
    if isinstance(path, RemotePath):
        with tempfile.TemporaryDirectory(prefix="upload_") as scratch:
            tmp = Path(scratch) / path.name  # keeps the suffix: writers that infer a format from it work
            yield tmp
            path.upload(tmp)
        return
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


def write_text_atomic(path: PathLike, text: str) -> StoragePath:
    """Replace ``path`` with ``text`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return as_path(path)


def copy_atomic(source: PathLike, path: PathLike) -> StoragePath:
    """Replace ``path`` with a copy of ``source`` atomically (either may be local or remote)."""
    source, path = as_path(source), as_path(path)
    if isinstance(source, RemotePath) and isinstance(path, RemotePath) and source.fs.type_name == path.fs.type_name:
        source.fs.copy_file(source.fs_path, path.fs_path)  # server-side: the object appears whole
        return path
    with atomic_path(path) as tmp:
        if isinstance(source, RemotePath):
            source.download(tmp)
        else:
            shutil.copyfile(source, tmp)
    return path
