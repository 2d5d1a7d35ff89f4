"""End to end: `ray start --head`, `ray job submit` of a tiny ensemble, wait for SUCCEEDED, `ray stop`."""

from __future__ import annotations

import os
import re
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray(args, env, timeout=300):
    ray_bin = str(Path(sys.executable).parent / "ray")
    return subprocess.run([ray_bin, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _wait_for_job_agent(address: str, env: dict, timeout_s: float = 120.0) -> None:
    """`ray start` returns before the job agent is up ("No available agent to submit job")."""
    deadline = time.monotonic() + timeout_s
    while True:
        listed = _ray(["job", "list", "--address", address], env, timeout=60)
        if listed.returncode == 0:
            return
        assert time.monotonic() < deadline, listed.stderr[-2000:]
        time.sleep(2)


def test_ray_job_submit_runs_the_ensemble(tmp_path):
    token = tmp_path / "auth_token"
    token.write_text(secrets.token_hex(32))
    # Ray's files go to tmp_path; a short link to it keeps socket paths under ~107 bytes.
    (tmp_path / "ray").mkdir()
    temp_dir = Path("/tmp") / f"xlp_job_{secrets.token_hex(4)}"
    temp_dir.symlink_to(tmp_path / "ray", target_is_directory=True)
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),  # the same on both sides
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # bind every address to 127.0.0.1
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        "XLSTM_PORTFOLIO_CACHE": str(tmp_path / "cache"),
    }
    env.pop("RAY_ADDRESS", None)
    gcs, dash = _free_port(), _free_port()
    started = _ray([
        "start", "--head", "--num-cpus", "2", "--port", str(gcs), "--node-ip-address", "127.0.0.1",
        "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--temp-dir", str(temp_dir),
        "--include-dashboard", "true", "--disable-usage-stats",
    ], env)
    try:
        assert started.returncode == 0, started.stderr[-3000:]
        storage = tmp_path / "runs"
        _wait_for_job_agent(f"http://127.0.0.1:{dash}", env)
        for attempt in range(6):  # the agent can still be starting after `job list` answers
            job = _ray([
                "job", "submit", "--address", f"http://127.0.0.1:{dash}", "--working-dir", ".", "--",
                "python", "-m", "ray_jobs.ensemble", "--config", "configs/model_config_cpu_smoke.yaml",
                "--seeds", "42", "--storage", str(storage), "--name", "job",
                "--set", "training.max_epochs=1",
            ], env, timeout=600)
            if "No available agent" not in job.stdout + job.stderr:
                break
            time.sleep(5)
        assert job.returncode == 0, (job.stdout[-4000:], job.stderr[-2000:])
        job_id = re.search(r"raysubmit_\w+", job.stdout + job.stderr).group(0)
        status = _ray(["job", "status", "--address", f"http://127.0.0.1:{dash}", job_id], env)
        assert f"Job '{job_id}' succeeded" in status.stdout, status.stdout  # JobStatus.SUCCEEDED
        assert (storage / "job" / "seeds" / "seed_42" / "best.pt").exists()
    finally:
        stopped = _ray(["stop", "--force"], env, timeout=120)
        temp_dir.unlink()
    assert stopped.returncode == 0
