"""Processes of the tests' own subprocesses, found through /proc (no `ps`, no `ray stop`), and free ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a cluster's GCS or dashboard: two
    clusters on one machine cannot share Ray's default ports)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ray_head(args: list[str], env: dict, log: Path, cwd: Path | None = None) -> subprocess.Popen:
    """``ray start --head --block`` on 127.0.0.1 plus ``args``, in a process group of its own (stop
    it with :func:`stop_process_group`), output to ``log``.  The dashboard agent and the Ray client
    server get free ports: Ray's fixed defaults (52365, 10001) are taken when another cluster runs
    on the machine, as the other Ray lane's does in make test, and an agent that cannot bind never
    comes up."""
    cmd = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
           "--dashboard-agent-listen-port", str(free_port()), "--ray-client-server-port", str(free_port()), *args]
    with open(log, "w") as out:
        return subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def process_group(pgid: int) -> set[int]:
    """Live (non-zombie) processes of a process group: a driver, its raylet, GCS, workers..."""
    members = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.add(int(proc.name))
    return members


def command_line(pid: int) -> str:
    """The command line of ``pid`` ("" once it has gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def stop_process_group(head: subprocess.Popen, grace_s: float = 5.0) -> None:
    """Stop a ``start_new_session`` subprocess and everything in its process group (a
    ``ray start --block`` with its GCS, raylet and workers): SIGTERM, ``grace_s`` of grace, then
    SIGKILL of what is left.  Only this group is touched, so other clusters on the machine (a
    test run beside this one) keep running, which ``ray stop`` would not allow."""
    try:
        os.killpg(head.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + grace_s
    while process_group(head.pid) and time.monotonic() < deadline:
        time.sleep(0.25)
    for pid in process_group(head.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        head.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
