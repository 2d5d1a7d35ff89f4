"""Processes of the tests' own subprocesses, found through /proc (no `ps`, no `ray stop`)."""

from __future__ import annotations

from pathlib import Path


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
