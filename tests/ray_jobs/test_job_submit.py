"""End to end: `ray start --head`, `ray job submit` of a tiny ensemble, wait for SUCCEEDED.

The head runs as `ray start --head --block` in its own process group, and the test stops that
group, not `ray stop`: `ray stop` kills every Ray process of the user on the machine, including
the cluster of the Ray tests that `make test` runs beside this one (its second lane)."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

from process_helpers import free_port, start_ray_head, stop_process_group

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _ray(args, env, timeout=300):
    ray_bin = str(Path(sys.executable).parent / "ray")
    return subprocess.run([ray_bin, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _wait_for_job_agent(address: str, env: dict, head: subprocess.Popen, log: Path, timeout_s: float = 120.0) -> None:
    """The head's job agent starts after its GCS ("No available agent to submit job")."""
    deadline = time.monotonic() + timeout_s
    while True:
        assert head.poll() is None, log.read_text()[-3000:]  # `ray start --block` exited: it failed
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
    gcs, dash = free_port(), free_port()
    head = start_ray_head([
        "--num-cpus", "2", "--port", str(gcs), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
        "--temp-dir", str(temp_dir), "--include-dashboard", "true", "--disable-usage-stats",
    ], env, tmp_path / "start.log", cwd=ROOT)
    try:
        storage = tmp_path / "runs"
        _wait_for_job_agent(f"http://127.0.0.1:{dash}", env, head, tmp_path / "start.log")
        # The agent can still be starting after `job list` answers: for 30 s and more when the
        # machine is busy (make test runs other tests beside this one).
        deadline = time.monotonic() + 180
        while True:
            job = _ray([
                "job", "submit", "--address", f"http://127.0.0.1:{dash}", "--working-dir", ".", "--",
                "python", "-m", "ray_jobs.ensemble", "--config", "configs/model_config_cpu_smoke.yaml",
                "--seeds", "42", "--storage", str(storage), "--name", "job",
                "--set", "training.max_epochs=1",
            ], env, timeout=600)
            if "No available agent" not in job.stdout + job.stderr or time.monotonic() > deadline:
                break
            time.sleep(5)
        assert job.returncode == 0, (job.stdout[-4000:], job.stderr[-2000:])
        job_id = re.search(r"raysubmit_\w+", job.stdout + job.stderr).group(0)
        status = _ray(["job", "status", "--address", f"http://127.0.0.1:{dash}", job_id], env)
        assert f"Job '{job_id}' succeeded" in status.stdout, status.stdout  # JobStatus.SUCCEEDED
        assert (storage / "job" / "seeds" / "seed_42" / "best.pt").exists()
    finally:
        stop_process_group(head)  # this test's cluster only
        temp_dir.unlink()
