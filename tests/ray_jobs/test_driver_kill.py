"""The ensemble driver killed with SIGKILL (its whole local cluster with it), then `--resume`.

Runs the real command line in subprocesses: no other Ray cluster is alive in this module.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from process_helpers import process_group
from ray_jobs import ray_cluster
from ray_jobs.run_folder import read_history

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _epochs(run_dir: Path) -> list[int]:
    return [row["epoch"] for row in read_history(run_dir)]


def test_killed_driver_is_finished_by_resume(tmp_path):
    cmd = [sys.executable, "-m", "ray_jobs.ensemble", "--config", "configs/model_config_cpu_smoke.yaml",
           "--storage", str(tmp_path), "--name", "exp", "--seeds", "1", "2", "--num-cpus", "2",
           "--set", "ensemble.max_concurrent=1"]
    seeds = tmp_path / "exp" / "seeds"
    with open(tmp_path / "first.log", "w") as log:
        driver = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 240
            while not _epochs(seeds / "seed_1") and driver.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
            assert driver.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert _epochs(seeds / "seed_1") == [1], "seed 1 never finished an epoch"
            cluster = process_group(driver.pid)
            assert len(cluster) > 3  # driver, GCS, raylet, workers...
        finally:
            os.killpg(driver.pid, signal.SIGKILL)  # the driver and the cluster it started
            driver.wait()
    time.sleep(1)
    assert process_group(driver.pid) == set()
    for link in ray_cluster.short_links_into(tmp_path):  # the killed driver could not remove its own
        ray_cluster.remove_short_link(link)
    assert not (seeds / "seed_1" / "finished.json").exists()

    resumed = subprocess.run(cmd + ["--resume"], cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "[seed 1] resuming after epoch" in resumed.stdout + resumed.stderr
    for seed in (1, 2):
        run_dir = seeds / f"seed_{seed}"
        assert _epochs(run_dir) == [1, 2, 3]  # each epoch once
        assert json.loads((run_dir / "finished.json").read_text())["epochs_run"] == 3
