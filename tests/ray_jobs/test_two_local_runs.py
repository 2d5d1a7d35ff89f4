"""A run's Ray internals find the run's own local cluster while another local cluster is up.

Ray Train's detached ``PlacementGroupCleaner`` asks the state API about the controller without an
address; with two local clusters and no ``RAY_ADDRESS`` that auto-detection fails ("Found multiple
active Ray instances") and the cleaner's thread dies with a traceback in the user's output.
Runs the real command line in a subprocess: no other cluster of this process is involved.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from process_helpers import command_line, free_port, process_group, start_ray_head, stop_process_group

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "model_config_cpu_smoke.yaml"
pytestmark = pytest.mark.slow


@pytest.fixture
def other_cluster():
    """A bare ``ray start --head --block`` on 127.0.0.1 with its own temp dir, stopped by its process group."""
    temp_dir = tempfile.mkdtemp(prefix="xlpo_")  # short: Ray's socket paths must stay < 107 bytes
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    port = free_port()
    head = start_ray_head(["--num-cpus", "1", "--port", str(port), "--include-dashboard", "false", "--temp-dir", temp_dir],
                          env, Path(temp_dir) / "start.log")
    try:
        deadline = time.monotonic() + 120
        while not any("gcs_server" in command_line(pid) for pid in process_group(head.pid)):
            assert head.poll() is None and time.monotonic() < deadline, (Path(temp_dir) / "start.log").read_text()
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        # `ray start --block` outlived SIGTERM for 30 s here (33.5 s of teardown); the cluster is
        # this test's own, with nothing on it to keep: a few seconds' grace, then SIGKILL.
        stop_process_group(head)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_second_local_run_keeps_its_placement_group_cleaner(other_cluster, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "train.py", "--config", str(SMOKE), "--seed", "5", "--output", str(out), "--num-cpus", "2",
         "--set", "training.max_epochs=1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert "Found multiple active Ray instances" not in output, output[-4000:]
    assert (out / "seed_5" / "best.pt").is_file()
    # The cleaner actor ran on the run's own cluster, and nothing in its logs is a failure.
    logs = list((out / "ray").glob("session_*/logs/worker-*"))
    cleaner = [p for p in logs if p.suffix == ".out" and ":actor_name:PlacementGroupCleaner" in p.read_text()]
    assert cleaner, sorted(p.name for p in logs)
    for path in cleaner:
        err = path.with_suffix(".err").read_text() if path.with_suffix(".err").exists() else ""
        assert "Traceback" not in err and "multiple active Ray instances" not in err, err[-3000:]
