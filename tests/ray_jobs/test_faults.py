"""Faults survived on a real local Ray cluster with the tiny smoke config (docs/reliability.md).

* a training worker killed with SIGKILL in mid-epoch: that seed resumes at its last checkpoint,
  the history holds every epoch once, the other seed of the ensemble is untouched;
* corrupt checkpoints on disk: the re-run resumes from the last good one;
* a NaN reaching the model in mid-training: SolverError naming epoch, step and batch element,
  no replay by Ray's restarts, the last good checkpoint intact, and a clean re-run finishes.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

import ray_jobs.seed_loop as seed_loop
import ray_jobs.seed_run as seed_run
import ray_jobs.steps as steps
from core.config import load_config
from core.errors import SolverError, TrainingError
from model.checkpoint import load_checkpoint
from ray_jobs.run_folder import read_history

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "model_config_cpu_smoke.yaml"
pytestmark = pytest.mark.slow


# --- fault injection ---------------------------------------------------------------------------
# The training loop runs in Ray worker processes, where a monkeypatch of this process never
# arrives.  ``inject_fault`` swaps the loop the driver hands to Ray for a wrapper that applies the
# fault inside the worker first.  Faults are closures: cloudpickle ships them by value (workers
# cannot import tests/), and each patches a module the real loop looks its steps up in.

def crash_after_epoch(epoch: int):
    """The worker raises right after epoch ``epoch``'s checkpoint is written and reported."""
    def fault():
        report = seed_loop.report_epoch

        def report_then_crash(run, state, metrics, improved):
            report(run, state, metrics, improved)
            if state.epoch == epoch:
                raise RuntimeError(f"injected failure after epoch {epoch} (test)")

        seed_loop.report_epoch = report_then_crash
    return fault


def nan_input_at(epoch: int, step: int, element: int):
    """That batch element's window becomes NaN, as a corrupt value reaching the model mid-run would."""
    def fault():
        training_step = steps.training_step

        def step_with_nan(cfg, fwd, optimizer, x, r_daily, r_horizon, at_epoch, at_step, *rest, **kwargs):
            if (at_epoch, at_step) == (epoch, step):
                x = x.clone()
                x[element] = float("nan")
            return training_step(cfg, fwd, optimizer, x, r_daily, r_horizon, at_epoch, at_step, *rest, **kwargs)

        steps.training_step = step_with_nan
    return fault


@pytest.fixture
def inject_fault(monkeypatch):
    """``inject_fault(fault)``: the seeds trained next run ``fault()`` in each worker before the real
    loop; ``monkeypatch.undo()`` (or the test's end) removes it."""
    def inject(fault) -> None:
        def loop(train_loop_config):
            fault()
            seed_loop.train_loop_per_worker(train_loop_config)

        monkeypatch.setattr(seed_run, "train_loop_per_worker", loop)
    return inject


def _epochs(run_dir: Path) -> list[int]:
    return [row["epoch"] for row in read_history(run_dir)]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _kill_worker_mid_epoch(run_dir: Path, after_epoch: int, seen: dict, address: str, timeout: float = 240.0) -> None:
    """Wait until ``after_epoch`` is logged, then SIGKILL the live training worker during the next
    epoch; ``seen`` records what was on disk at that moment.  ``address``: this test's cluster (the
    state API refuses to guess when another Ray cluster runs on the machine)."""
    from ray.util.state import list_actors

    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if len(_epochs(run_dir)) >= after_epoch:
            break
        time.sleep(0.1)
    else:
        seen["error"] = f"epoch {after_epoch} never finished"
        return
    time.sleep(0.5)  # into the next epoch (40 steps take a few seconds)
    workers = list_actors(address=address, filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
    seen["epochs_at_kill"] = _epochs(run_dir)
    seen["workers"] = [w.pid for w in workers]
    for w in workers:
        os.kill(w.pid, signal.SIGKILL)


def test_sigkilled_worker_resumes_its_seed_and_leaves_the_other_seed_alone(ray_cluster, tmp_path, capfd):
    from ray_jobs.ensemble import parse_args, run

    args = parse_args([
        "--config", str(SMOKE), "--storage", str(tmp_path), "--name", "ens", "--seeds", "3", "4",
        "--set", "training.steps_per_epoch=40",  # an epoch of ~2-3 s: long enough to kill it midway
        "--set", "ensemble.max_failures=1", "--set", "ensemble.max_concurrent=1",
    ])
    seeds = tmp_path / "ens" / "seeds"
    seen: dict = {}
    killer = threading.Thread(target=_kill_worker_mid_epoch, args=(seeds / "seed_3", 1, seen, ray_cluster), daemon=True)
    killer.start()
    run(args)
    killer.join(timeout=5)
    assert "error" not in seen, seen
    assert len(seen["workers"]) == 1 and seen["epochs_at_kill"] == [1]  # killed during epoch 2
    out = capfd.readouterr().out
    assert "[seed 3] resuming after epoch 1" in out  # at most one epoch (the unfinished 2nd) is redone
    assert "[seed 4] resuming" not in out
    for seed in (3, 4):
        run_dir = seeds / f"seed_{seed}"
        assert _epochs(run_dir) == [1, 2, 3]  # every epoch once: no gap, no duplicate
        info = json.loads((run_dir / "finished.json").read_text())
        assert info["epochs_run"] == 3 and load_checkpoint(run_dir / "latest.pt")["epoch"] == 3


def test_corrupt_checkpoints_are_named_and_resume_takes_the_last_good_one(ray_cluster, tmp_path, capfd,
                                                                         inject_fault, monkeypatch):
    from ray_jobs.seed_run import train_one_seed

    cfg = load_config(SMOKE, ["training.max_epochs=3", "ensemble.max_failures=0"])
    inject_fault(crash_after_epoch(2))
    with pytest.raises(TrainingError, match="seed 21 failed"):
        train_one_seed(cfg, 21, tmp_path)  # a crash after epoch 2's checkpoint
    monkeypatch.undo()
    run_dir = tmp_path / "seed_21"
    copies = sorted(run_dir.glob("checkpoint_*/checkpoint.pt"))
    assert [load_checkpoint(p)["epoch"] for p in copies] == [1, 2]
    latest = run_dir / "latest.pt"
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])  # truncated
    copies[1].write_bytes(b"\x00" * 512)  # zeroed
    info, _ = train_one_seed(cfg, 21, tmp_path)
    out = capfd.readouterr().out
    assert f"skipping unreadable checkpoint: {latest} is corrupt" in out
    assert f"skipping unreadable checkpoint: {copies[1]} is corrupt" in out
    assert f"resuming from the last good checkpoint {copies[0]} (epoch 1)" in out
    assert "dropped 1 metric row(s)" in out  # epoch 2's row: it is redone
    assert _epochs(run_dir) == [1, 2, 3] and info["epochs_run"] == 3
    assert load_checkpoint(latest)["epoch"] == 3


def test_nan_mid_training_stops_with_solver_error_and_keeps_the_last_checkpoint(ray_cluster, tmp_path, capfd,
                                                                              inject_fault, monkeypatch):
    from ray_jobs.seed_run import train_one_seed

    cfg = load_config(SMOKE, ["training.max_epochs=3", "ensemble.max_failures=2"])
    inject_fault(nan_input_at(epoch=2, step=1, element=3))
    with pytest.raises(SolverError, match=r"^seed 23: epoch 2, step 1: portfolio layer \(torch\): batch element 3 "
                                          r"\(of 1 bad\): mu contains NaN.*the last good checkpoint is .*latest\.pt"):
        train_one_seed(cfg, 23, tmp_path)
    monkeypatch.undo()  # the cause removed
    run_dir = tmp_path / "seed_23"
    (copy,) = run_dir.glob("checkpoint_*/checkpoint.pt")
    assert load_checkpoint(run_dir / "latest.pt")["epoch"] == 1
    assert _digest(run_dir / "latest.pt") == _digest(copy)  # epoch 1's checkpoint, untouched
    assert _epochs(run_dir) == [1] and not (run_dir / "finished.json").exists()
    out = capfd.readouterr().out
    assert "resuming after epoch 1" not in out  # Ray's 2 restarts refused at once: no replay of the failure
    assert json.loads((run_dir / "failed.json").read_text())["type"] == "SolverError"

    info, _ = train_one_seed(cfg, 23, tmp_path)  # the cause removed: a new attempt finishes
    out = capfd.readouterr().out
    assert "the previous attempt stopped with SolverError" in out and "resuming after epoch 1" in out
    assert _epochs(run_dir) == [1, 2, 3] and info["epochs_run"] == 3
    assert not (run_dir / "failed.json").exists()


def test_the_running_local_cluster_listens_on_loopback_only(ray_cluster):
    import ray

    alive = [n for n in ray.nodes() if n["Alive"]]
    assert alive and all(n["NodeManagerAddress"] == "127.0.0.1" for n in alive), alive
    assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")
    dashboard = ray._private.worker.global_worker.node.address_info["webui_url"]
    assert dashboard.startswith("127.0.0.1:"), dashboard
