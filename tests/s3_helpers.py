"""An S3-compatible server on 127.0.0.1 for the tests: moto's server in a subprocess, with a bucket.

Credentials are dummy values in the environment (as an instance role would supply real ones);
the server keeps its objects in memory and goes away with the subprocess.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pyarrow.fs as pafs
import pytest

from process_helpers import free_port

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",  # never ask an instance-metadata endpoint for credentials
}


def _wait_for_port(port: int, server: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"moto server exited: {log.read_text()[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.2)
    raise RuntimeError(f"moto server did not listen on 127.0.0.1:{port} within {timeout:.0f} s")


@contextlib.contextmanager
def s3_bucket(folder: Path, bucket: str = "runs-bucket") -> Iterator[str]:
    """Start moto's S3 server on a free loopback port with ``bucket`` created; yield the query that
    points a pyarrow S3 URI at it (``endpoint_override=127.0.0.1:PORT&scheme=http``)."""
    port = free_port()
    log = folder / "moto.log"
    with pytest.MonkeyPatch.context() as mp, open(log, "w") as out:
        for key, value in AWS_ENV.items():
            mp.setenv(key, value)
        server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                  stdout=out, stderr=subprocess.STDOUT)
        try:
            _wait_for_port(port, server, log)
            query = f"endpoint_override=127.0.0.1:{port}&scheme=http"
            pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http",
                              allow_bucket_creation=True).create_dir(bucket)
            yield query
        finally:
            server.terminate()
            server.wait(timeout=30)


def bucket_files(uri: str) -> dict[str, int]:
    """Every object under ``uri`` (a RemotePath's string), relative path -> size."""
    from core.storage import as_path

    root = as_path(uri)
    infos = root.fs.get_file_info(pafs.FileSelector(root.fs_path, recursive=True, allow_not_found=True))
    return {i.path[len(root.fs_path) + 1:]: i.size for i in infos if i.type == pafs.FileType.File}
