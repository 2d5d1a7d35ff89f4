"""Shared storage on a Ray cluster of two nodes (``ray.cluster_utils.Cluster`` on 127.0.0.1) and an
S3-compatible server (moto) on 127.0.0.1.

The head node (the driver's) has no CPU, so every trial and training worker runs on the second node,
and every file a run writes must reach the bucket: Ray's checkpoints, Tune's state and the run
folders' own files.  A killed trial is resumed from the bucket with ``--resume``; analyze, predict
and ``Ensemble.load`` read the bucket.  A local folder on the same cluster is refused before training.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from core.errors import TrainingError
from core.files import copy_atomic
from core.storage import as_path
from ray_jobs.run_folder import CHECKPOINT_FILE, read_history
from process_helpers import free_port
from s3_helpers import bucket_files, s3_bucket

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "model_config_cpu_smoke.yaml"
pytestmark = pytest.mark.slow
RUN_FILES = {"metrics.jsonl", "latest.pt", "best.pt", "finished.json", "failed.json", CHECKPOINT_FILE}


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    """The bucket's query string, and a two-node cluster started after the S3 credentials are in
    the environment (its processes inherit them, as nodes with an instance role would have them).

    The job's workers (trials, training workers) get ``TMPDIR`` inside the test's tmp dir, to check
    that nothing of the run stays there.
    """
    import ray
    from ray.cluster_utils import Cluster

    from ray_jobs import ray_cluster

    root = tmp_path_factory.mktemp("two_nodes")
    scratch = root / "scratch"
    scratch.mkdir()
    os.environ.pop("RAY_ADDRESS", None)
    ray_cluster.ensure_auth_token(root)
    ray_cluster.bind_to_loopback()
    temp_dir = ray_cluster._temp_dir(root)  # a short link: Ray's socket paths must stay short
    (root / "ray_tmp" / "ray").mkdir(parents=True)  # cluster_utils notes its address in RAY_TMPDIR/ray
    with s3_bucket(root) as query, ray_cluster._own_address_exported() as address, \
            pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_TMPDIR", str(root / "ray_tmp"))
        cluster = None
        try:
            cluster = Cluster(initialize_head=True, head_node_args=dict(
                num_cpus=0, node_ip_address="127.0.0.1", temp_dir=temp_dir, gcs_server_port=int(address.rsplit(":", 1)[1]),
                include_dashboard=True, dashboard_host="127.0.0.1",
                dashboard_port=free_port()))  # not Ray's default 8265: another cluster may hold it
            cluster.add_node(num_cpus=2, node_ip_address="127.0.0.1")
            ray.init(address=cluster.address, runtime_env={"env_vars": {"TMPDIR": str(scratch)}})
            yield SimpleNamespace(query=query, address=address, scratch=scratch, root=root)
        finally:
            ray.shutdown()
            if cluster is not None:
                cluster.shutdown()
            ray_cluster.remove_short_link(temp_dir)


def _local_run_files(folder: Path) -> set[Path]:
    """Run-folder files anywhere under ``folder`` (the venv and git left out): checkpoints, metrics,
    markers, and our TensorBoard event files (in ``tensorboard/`` or a ``tensorboard_*`` scratch
    folder; Tune's own trial event files are Ray's, staged in its session folder)."""
    found = set()
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if d not in (".venv", ".git")]
        ours = Path(dirpath).name.startswith("tensorboard")
        found |= {Path(dirpath, f) for f in filenames if f in RUN_FILES or (ours and f.startswith("events.out"))}
    return found


def _kill_worker_in_epoch_2(run_dir, seen: dict, address: str, timeout: float = 300.0) -> None:
    """Once epoch 1's checkpoint is in the bucket (Ray's copy: written last), SIGKILL the live
    training worker during epoch 2."""
    from ray.util.state import list_actors

    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if list(run_dir.glob(f"checkpoint_*/{CHECKPOINT_FILE}")):
            break
        time.sleep(0.2)
    else:
        seen["error"] = "epoch 1's checkpoint never reached the bucket"
        return
    time.sleep(0.5)  # into epoch 2 (24 steps and the validation take seconds)
    workers = list_actors(address=address, filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
    seen["epochs_at_kill"] = [row["epoch"] for row in read_history(run_dir)]
    seen["nodes"] = {w.node_id for w in workers}
    for w in workers:
        os.kill(w.pid, signal.SIGKILL)
    seen["workers"] = [w.pid for w in workers]


def test_ensemble_on_two_nodes_lives_in_the_bucket_and_resumes_from_it(two_nodes, tmp_path, capfd):
    import ray

    from ray_jobs import analyze, ensemble, predict
    from ray_jobs.ensemble_model import Ensemble

    local_before = _local_run_files(ROOT)
    storage = f"s3://runs-bucket/runs?{two_nodes.query}"
    args = ["--config", str(SMOKE), "--storage", storage, "--name", "ens", "--seeds", "3", "4",
            "--set", "training.steps_per_epoch=24", "--set", "training.max_epochs=2",
            "--set", "ensemble.max_concurrent=1"]  # the smoke config's max_failures: 0
    experiment = as_path(storage) / "ens"
    seeds = experiment / "seeds"
    seen: dict = {}
    killer = threading.Thread(target=_kill_worker_in_epoch_2, args=(seeds / "seed_3", seen, two_nodes.address),
                              daemon=True)
    killer.start()
    with pytest.raises(TrainingError, match=r"(?s)^1 seed\(s\) failed \(\[3\]\).*finish with --resume\.$"):
        ensemble.run(ensemble.parse_args(args))
    killer.join(timeout=5)
    assert "error" not in seen, seen
    head = ray.get_runtime_context().get_node_id()
    assert len(seen["workers"]) == 1 and seen["epochs_at_kill"] == [1] and head not in seen["nodes"], seen

    assert ensemble.run(ensemble.parse_args(args + ["--resume"])) == experiment
    out = capfd.readouterr().out
    assert "[seed 3] resuming after epoch 1" in out and "[seed 4] resuming" not in out  # from the bucket
    files = bucket_files(str(experiment))
    assert any(name.startswith("experiment_state-") for name in files)  # Tune's state
    for seed in (3, 4):
        run_dir = seeds / f"seed_{seed}"
        assert [row["epoch"] for row in read_history(run_dir)] == [1, 2]  # every epoch once
        info = json.loads((run_dir / "finished.json").read_text())
        assert info["epochs_run"] == 2 and info["best_checkpoint"] == str(run_dir / "best.pt")
        prefix = f"seeds/seed_{seed}/"
        assert {prefix + name for name in ("metrics.jsonl", "latest.pt", "best.pt")} <= set(files)
        assert any(n.startswith(prefix + "checkpoint_") and n.endswith("/" + CHECKPOINT_FILE) for n in files)  # Ray's
        assert any(n.startswith(prefix + "tensorboard/events.out.tfevents") for n in files)

    table = analyze.analyze(str(experiment)).set_index("seed")  # output: EXPERIMENT/analysis in the bucket
    assert {"analysis/seeds.csv", "analysis/seeds.md", "analysis/curves.png"} <= set(bucket_files(str(experiment)))
    for seed in (3, 4):  # the analysis agrees with what each seed's workers recorded as its best
        info = json.loads((seeds / f"seed_{seed}" / "finished.json").read_text())
        assert table.loc[seed, "best_val_sharpe"] == pytest.approx(info["best_val_sharpe"], abs=1e-12)
        assert table.loc[seed, "best_epoch"] == info["best_epoch"] and table.loc[seed, "epochs_run"] == 2
    # Tune got the reports too; but its record of the resumed seed 3 may have started over at the
    # resume (seen as [2] in one run of this test, [1, 2] in another): analyze reads metrics.jsonl.
    tune_rows = analyze.ExperimentAnalysis(seeds.parent.fs_path, storage_filesystem=seeds.fs).trial_dataframes
    by_seed = {int(df["config/seed"].iloc[0]): df for df in tune_rows.values()}
    assert list(by_seed[4]["val_sharpe"]) == [row["val_sharpe"] for row in read_history(seeds / "seed_4")]
    assert list(by_seed[3]["epoch"]) in ([2], [1, 2])

    # predict from the bucket == predict from local copies of the same best checkpoints
    assert Ensemble.load(str(experiment)).seeds == [3, 4]
    for seed in (3, 4):
        copy_atomic(seeds / f"seed_{seed}" / "best.pt", tmp_path / "copies" / f"seed_{seed}" / "best.pt")
    assert predict.main(["--experiment", str(experiment), "--split", "test", "--out", str(tmp_path / "s3.parquet")]) == 0
    assert predict.main(["--runs", str(tmp_path / "copies"), "--split", "test", "--out",
                         str(tmp_path / "local.parquet")]) == 0
    remote, local = pd.read_parquet(tmp_path / "s3.parquet"), pd.read_parquet(tmp_path / "local.parquet")
    assert len(remote) > 100
    pd.testing.assert_frame_equal(remote, local)

    # Nothing of the run on local disk: not in the workers' temp dir, not in Ray's, not in the repo;
    # except the scratch copy of the event file that the SIGKILLed worker could not remove (its
    # content reached the bucket at the end of epoch 1).
    left = _local_run_files(two_nodes.root)
    assert {p.parent.parent for p in left} <= {two_nodes.scratch} and len({p.parent for p in left}) <= 1, left
    assert _local_run_files(ROOT) == local_before
    assert list(tmp_path.rglob(CHECKPOINT_FILE)) == []


def test_a_local_folder_on_two_nodes_is_refused_before_training(two_nodes, tmp_path, capsys):
    from ray_jobs.ensemble import main
    from ray_jobs.ray_cluster import check_shared_storage

    storage = tmp_path / "runs"
    code = main(["--config", str(SMOKE), "--storage", str(storage), "--name", "ens"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: --storage {storage} is a local folder, but the Ray cluster has 2 nodes"), err
    assert "--storage s3://BUCKET/PATH" in err[0] and "--shared-mount" in err[0]
    assert list((storage / "ens").iterdir()) == []  # no seed folder: nothing trained
    check_shared_storage(storage, shared_mount=True)  # one machine: every node sees the folder
