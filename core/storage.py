"""Where a run's files live: a local folder, or a folder on any pyarrow file system (``s3://``, ``gs://``, ...).

:func:`as_path` turns what a user passes as ``--storage`` / ``--output`` / ``--experiment`` into

* a ``pathlib.Path`` for a plain path (or a ``file://`` URI): local disk, or a shared mount such as
  EFS / NFS that every node sees at the same path;
* a :class:`RemotePath` for any other URI that ``pyarrow.fs.FileSystem.from_uri`` knows, e.g.
  ``s3://bucket/runs`` (credentials from the environment or the node's instance role) or, for an
  S3-compatible server, ``s3://bucket/runs?endpoint_override=HOST:PORT&scheme=http``.

A :class:`RemotePath` answers the part of ``pathlib.Path``'s API the project uses (``/``, ``name``,
``parent``, ``exists``, ``is_file``, ``is_dir``, ``iterdir``, ``glob``, ``stat``, ``read_text``,
``read_bytes``, ``unlink``, ``mkdir``), so the run-folder code reads both kinds alike.  Writes go
through :mod:`core.files`, which makes them atomic on both: a local file is replaced by a rename, an
object is uploaded whole (an object store shows the old object or the new one, never a torn one).
``str()`` of a RemotePath is its URI, query included, so a printed location can be passed back.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterator, Union
from urllib.parse import parse_qs, urlsplit

import pyarrow.fs as pafs

from core.errors import ConfigError

# Secrets in a URI would be printed, logged and stored in finished.json with every location.
_SECRET_KEYS = ("access_key", "secret_key", "session_token")


@dataclass(frozen=True)
class Stat:
    """The two fields of ``os.stat_result`` the run folder uses."""

    st_mtime_ns: int
    st_size: int


class RemotePath:
    """A file or folder on a pyarrow file system: the file system, the path on it, and how to name it.

    ``fs_path`` is the file system's own path (``bucket/key`` on S3); ``prefix`` + ``fs_path`` +
    ``query`` is the URI.  Picklable (Ray ships it to workers); an S3 file system pickles without
    credentials unless they were given explicitly, so each node finds its own (env, instance role).
    """

    __slots__ = ("fs", "fs_path", "prefix", "query")

    def __init__(self, fs: pafs.FileSystem, fs_path: str, prefix: str, query: str = ""):
        self.fs, self.fs_path, self.prefix, self.query = fs, fs_path.rstrip("/") or fs_path, prefix, query

    def __reduce__(self):
        return RemotePath, (self.fs, self.fs_path, self.prefix, self.query)

    # --- naming --------------------------------------------------------------------------------
    def __str__(self) -> str:
        return self.prefix + self.fs_path + (f"?{self.query}" if self.query else "")

    def __repr__(self) -> str:
        return f"RemotePath({str(self)!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, RemotePath) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    def __lt__(self, other: "RemotePath") -> bool:
        return str(self) < str(other)

    def __truediv__(self, name: Union[str, os.PathLike]) -> "RemotePath":
        return RemotePath(self.fs, f"{self.fs_path}/{str(name).strip('/')}", self.prefix, self.query)

    def _with(self, fs_path: str) -> "RemotePath":
        return RemotePath(self.fs, fs_path, self.prefix, self.query)

    @property
    def name(self) -> str:
        return PurePosixPath(self.fs_path).name

    @property
    def parent(self) -> "RemotePath":
        return self._with(str(PurePosixPath(self.fs_path).parent))

    def resolve(self) -> "RemotePath":
        return self

    def is_absolute(self) -> bool:
        return True

    # --- reading -------------------------------------------------------------------------------
    def _type(self) -> pafs.FileType:
        return self.fs.get_file_info(self.fs_path).type

    def exists(self) -> bool:
        return self._type() != pafs.FileType.NotFound

    def is_file(self) -> bool:
        return self._type() == pafs.FileType.File

    def is_dir(self) -> bool:
        return self._type() == pafs.FileType.Directory

    def stat(self) -> Stat:
        info = self.fs.get_file_info(self.fs_path)
        if info.type == pafs.FileType.NotFound:
            raise FileNotFoundError(f"{self} does not exist")
        return Stat(st_mtime_ns=info.mtime_ns or 0, st_size=info.size or 0)

    def iterdir(self) -> Iterator["RemotePath"]:
        selector = pafs.FileSelector(self.fs_path, recursive=False, allow_not_found=True)
        for info in sorted(self.fs.get_file_info(selector), key=lambda i: i.path):
            yield self._with(info.path)

    def glob(self, pattern: str) -> Iterator["RemotePath"]:
        """Matches of ``pattern`` below this folder, one level per ``/``-separated part (no ``**``)."""
        first, _, rest = pattern.partition("/")
        if first == "**":
            raise ValueError(f"RemotePath.glob does not take '**' (got {pattern!r}).")
        for child in self.iterdir():
            if fnmatch.fnmatchcase(child.name, first):
                if not rest:
                    yield child
                elif child.is_dir():
                    yield from child.glob(rest)

    def read_bytes(self) -> bytes:
        with self.fs.open_input_stream(self.fs_path) as fh:
            return fh.read()

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    # --- changing ------------------------------------------------------------------------------
    def mkdir(self, parents: bool = True, exist_ok: bool = True) -> None:
        """Object stores have no folders; this still proves the bucket exists (pyarrow checks it)."""
        self.fs.create_dir(self.fs_path, recursive=True)

    def unlink(self, missing_ok: bool = False) -> None:
        if missing_ok and not self.exists():
            return
        self.fs.delete_file(self.fs_path)

    def upload(self, local: Union[str, Path]) -> None:
        """Copy the local file ``local`` here as one object (visible only once it is complete)."""
        pafs.copy_files(str(local), self.fs_path, source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=self.fs)

    def download(self, local: Union[str, Path]) -> None:
        pafs.copy_files(self.fs_path, str(local), source_filesystem=self.fs,
                        destination_filesystem=pafs.LocalFileSystem())


StoragePath = Union[Path, RemotePath]


def is_uri(text: str) -> bool:
    return "://" in text


def as_path(location: Union[str, os.PathLike, RemotePath]) -> StoragePath:
    """A ``Path`` for a local path or ``file://`` URI, a :class:`RemotePath` for any other URI.

    Raises ConfigError for a URI pyarrow cannot open (unknown scheme, missing bucket name) or one
    carrying credentials.
    """
    if isinstance(location, (Path, RemotePath)):
        return location
    text = os.fspath(location)
    if not is_uri(text):
        return Path(text)
    parts = urlsplit(text)
    secrets = sorted(set(parse_qs(parts.query)) & set(_SECRET_KEYS))
    if secrets:
        raise ConfigError(
            f"storage URI {parts.scheme}://{parts.netloc}{parts.path} carries {', '.join(secrets)}: a location is "
            "printed and stored with the run. Give credentials through the environment (AWS_ACCESS_KEY_ID, "
            "AWS_SECRET_ACCESS_KEY) or the node's instance role instead."
        )
    try:
        fs, fs_path = pafs.FileSystem.from_uri(text)
    except (ValueError, OSError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise ConfigError(
            f"storage URI {text!r} cannot be opened ({exc}); use s3://BUCKET/PATH (or another pyarrow file "
            "system URI) or a local / shared-mount path."
        ) from exc
    if isinstance(fs, pafs.LocalFileSystem):
        return Path(fs_path)
    base = text.split("?", 1)[0].rstrip("/")
    fs_path = fs_path.rstrip("/")
    if not fs_path or not base.endswith(fs_path):
        raise ConfigError(f"storage URI {text!r}: name a folder inside the bucket, e.g. s3://BUCKET/runs.")
    return RemotePath(fs, fs_path, base[: len(base) - len(fs_path)], parts.query)


def fs_and_path(location: Union[str, os.PathLike, RemotePath]) -> tuple[pafs.FileSystem | None, str]:
    """What Ray's and pyarrow's APIs take: (file system, path on it) of a URI, (None, absolute path)
    of a local folder (Ray then uses the local file system, as for a plain path)."""
    location = as_path(location)
    if isinstance(location, RemotePath):
        return location.fs, location.fs_path
    return None, str(location.resolve())
