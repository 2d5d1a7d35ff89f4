"""Build the TorchTrainer that trains one seed (used by ``train.py`` and by each Tune trial)."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import ray
import ray.data
import ray.train
from ray.train.torch import TorchTrainer

from core.config import Config
from core.errors import DeviceError
from core.storage import StoragePath, as_path
from data.splits import Splits, block_starts
from data.windows import pin_panel, prepare
from ray_jobs import ray_cluster
from ray_jobs.run_folder import (
    clear_failure, ensure_writable, read_finished, refuse_finished, seed_failure, seed_run_name,
)
from ray_jobs.seed_loop import LoopSettings, train_loop_per_worker
from ray_jobs.steps import per_worker_batch


def train_dataset(train_indices, seed: int, cfg: Config) -> ray.data.Dataset:
    """What the workers stream, 8 bytes a row, for ``iter_torch_batches``: the training split's
    decision indices ``{"t"}``, or with ``training.batch_dates: blocks`` the positions in the split
    where a worker's block of rebalance dates can start, ``{"start"}`` (:func:`data.splits.block_starts`).

    The shuffle happens in the worker's iterator (a local shuffle buffer as large as the split,
    seeded per epoch): measured 0.14 s per epoch vs 5 s for ``random_shuffle()``'s all-to-all
    on 4,361 rows (docs/performance.md).  ``randomize_block_order`` varies which worker gets
    which rows each epoch when num_workers > 1.
    """
    if cfg.training.batch_dates == "blocks":
        size = per_worker_batch(cfg, cfg.resources.num_workers)
        starts = block_starts(np.asarray(train_indices), size, cfg.data.prediction_horizon)
        items = [{"start": int(p)} for p in starts]
    else:
        items = [{"t": int(t)} for t in train_indices]
    return ray.data.from_items(items).randomize_block_order(seed=seed)


def check_cluster_devices(cfg: Config) -> None:
    """On a cluster the driver may have no GPU: check the cluster, not this process."""
    tr = cfg.training
    if tr.device == "cuda":
        gpus = ray.cluster_resources().get("GPU", 0.0)
        need = cfg.resources.gpus_per_worker * cfg.resources.num_workers
        if gpus < need:
            raise DeviceError(
                f"training.device = 'cuda' needs {need} GPU(s) per seed but the Ray cluster has {gpus}. "
                "Start GPU workers (see cluster.yaml) or pass --set training.device=cpu."
            )


def build_trainer(
    cfg: Config,
    seed: int,
    storage_path: StoragePath,
    train_indices,
    panel_path: Optional[str] = None,
    callbacks: Sequence = (),
    splits: Optional[Splits] = None,
) -> TorchTrainer:
    """TorchTrainer for one seed; its run directory is ``storage_path / seed_<seed>``, a local
    folder or a URI (Ray's own checkpoints land there too: :func:`ray_cluster.ray_storage`).

    The workers resume from the newest good checkpoint in that directory (a restarted worker, or a
    re-run of an interrupted seed: Train V2 dropped ``resume_from_checkpoint``).  ``splits``: a
    walk-forward fold's spans (``train_indices`` is then its train span), else the config's split.
    """
    tr = cfg.training
    name = seed_run_name(seed)
    storage_path = as_path(storage_path).resolve()
    run_dir = storage_path / name
    run_dir.mkdir(parents=True, exist_ok=True)
    res = cfg.resources
    resources = {"CPU": res.cpus_per_worker}
    if tr.device == "cuda":
        resources["GPU"] = res.gpus_per_worker
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"settings": LoopSettings(cfg=cfg, seed=seed, run_dir=run_dir, panel_path=panel_path,
                                                    n_train=len(train_indices), splits=splits)},
        scaling_config=ray.train.ScalingConfig(
            num_workers=res.num_workers, use_gpu=tr.device == "cuda", resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=name,
            **ray_cluster.ray_storage(storage_path),
            failure_config=ray.train.FailureConfig(max_failures=cfg.ensemble.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=list(callbacks),
            # Our own one-line-per-epoch progress replaces Train's per-report INFO dump.
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
        ),
        datasets={"train": train_dataset(train_indices, seed, cfg)},
        # One worker reads the whole dataset itself: the same batches as a one-way streaming split
        # (checked), without the split's coordinator actor and its per-epoch hand-off (~2 s at the
        # first batch, ~0.4 s at each later epoch; docs/performance.md).  Several workers split it.
        dataset_config=ray.train.DataConfig(datasets_to_split=[] if res.num_workers == 1 else "all"),
    )


def train_one_seed(cfg: Config, seed: int, output: StoragePath, panel_path: Optional[str] = None,
                   num_cpus: Optional[int] = None, shared_mount: bool = False):
    """Validate the panel and the output folder, then fit one seed's TorchTrainer on a local
    cluster or RAY_ADDRESS.  Nothing is written before both checks pass.  ``output`` is a local
    folder or a URI; a local one on a cluster of several nodes needs ``shared_mount``
    (:func:`ray_cluster.check_shared_storage`).

    Returns (finished.json contents, Ray's Result).  A failed seed raises the typed error its
    workers stopped with (SolverError, TrainingError, CheckpointError), else TrainingError.
    """
    cfg, panel_path = pin_panel(cfg, panel_path)
    output = as_path(output).resolve()
    run_dir = output / seed_run_name(seed)
    refuse_finished(run_dir)
    prepared = prepare(cfg, panel_path)  # validates the panel before anything trains
    ensure_writable(output)
    print(f"panel: {prepared.panel.features.shape[0]} dates x {len(prepared.panel.factors)} factors x "
          f"{len(prepared.panel.feature_names)} features; train/val/test decisions "
          f"{len(prepared.splits.train)}/{len(prepared.splits.val)}/{len(prepared.splits.test)}")
    with ray_cluster.ray_session(output, num_cpus=num_cpus):
        ray_cluster.check_shared_storage(output, shared_mount, flag="--output")
        check_cluster_devices(cfg)
        clear_failure(run_dir)  # only now: a refused run leaves the failure record as it was
        trainer = build_trainer(cfg, seed, output, prepared.splits.train, panel_path=panel_path)
        try:
            result = trainer.fit()
        except ray.train.TrainingFailedError as exc:
            raise seed_failure(run_dir, seed, exc) from exc
    return read_finished(run_dir), result
