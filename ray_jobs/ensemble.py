"""Train the ensemble: one Ray Tune trial per seed, each running that seed's TorchTrainer.

  python -m ray_jobs.ensemble --config configs/model_config_cpu_smoke.yaml --storage runs/ens
  ray job submit --working-dir . -- python -m ray_jobs.ensemble --config ... --storage s3://BUCKET/runs

``--storage`` is a local folder or a URI (``s3://...``, any pyarrow file system): the experiment's
every file, Ray's and ours, lands there.  A cluster of several nodes needs a URI or a shared mount
(``--shared-mount``); a local folder there is refused before training.

``Tuner(TorchTrainer)`` is refused by Ray 2.60 (Train V2), so each trial is a light function that
builds and fits a TorchTrainer reporting to Tune through ``TuneReportCallback``.  Early stopping is
patience on ``val_sharpe`` inside each seed's loop: no scheduler compares seeds (ASHA would prune a
seed for being worse than another, which is wrong for an ensemble).
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from dataclasses import dataclass

import ray
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from core.cli import CliParser, run_cli
from core.config import Config, check_device, load_config
from core.errors import ConfigError
from core.storage import StoragePath, as_path, fs_and_path
from data.windows import pin_panel, prepare
from ray_jobs import ray_cluster
from ray_jobs.analyze import seed_table
from ray_jobs.run_folder import SEEDS_DIR, clear_failure, ensure_writable, seed_failure, seed_run_name
from ray_jobs.seed_run import build_trainer, check_cluster_devices

# The trial function only waits on its TorchTrainer: a sliver of a CPU, not a whole one.
TRIAL_DRIVER_CPU = 0.01


@dataclass(frozen=True)
class TrialRun:
    """What every seed's trial shares through ``tune.with_parameters``; Tune varies only the seed."""

    cfg: Config
    seeds_dir: StoragePath  # absolute path or URI: <experiment>/seeds, one run folder per seed (ray_jobs/run_folder.py)
    train_indices: tuple[int, ...]  # decision indices of the training split
    panel_path: str | None  # absolute Parquet path, or None for the embedded synthetic panel


def seed_trial(trial_config: dict, run: TrialRun) -> None:
    """Tune trainable: fit the TorchTrainer of one seed.  Returns nothing (a dict would be a result).

    ``trial_config`` is Tune's ``{"seed": seed}``.
    """
    trainer = build_trainer(
        run.cfg, int(trial_config["seed"]), run.seeds_dir, run.train_indices,
        panel_path=run.panel_path, callbacks=[TuneReportCallback()],
    )
    trainer.fit()


def trial_trainable(run, trial=seed_trial):
    """``trial(trial_config, run=run)`` as a Tune trainable holding a sliver of a CPU."""
    return tune.with_resources(tune.with_parameters(trial, run=run), {"CPU": TRIAL_DRIVER_CPU})


def run_spec(cfg: Config, experiment_dir: StoragePath, train_indices, panel_path) -> TrialRun:
    return TrialRun(cfg, as_path(experiment_dir) / SEEDS_DIR, tuple(int(t) for t in train_indices), panel_path)


def seeds_at_once(cfg: Config) -> int:
    """How many seeds train concurrently: ensemble.max_concurrent, or what the cluster holds.

    A seed needs its workers' CPUs (and GPU shares) plus one CPU for its Ray Data work.  Capping
    here, instead of letting trials queue inside Ray Train, avoids Train's 60 s worker-group
    start-up timeout counting a seed that merely waits for resources as a failure.
    """
    if cfg.ensemble.max_concurrent:
        return cfg.ensemble.max_concurrent
    res = cfg.resources
    resources = ray.cluster_resources()
    fit = int(resources.get("CPU", 0.0) // (res.num_workers * res.cpus_per_worker + 1))
    if cfg.training.device == "cuda":
        fit = min(fit, int(resources.get("GPU", 0.0) / (res.num_workers * res.gpus_per_worker) + 1e-9))
    at_once = max(1, fit)
    print(f"seeds at once: {at_once} (cluster {resources.get('CPU', 0):g} CPU, {resources.get('GPU', 0):g} GPU)")
    return at_once


def build_tuner(cfg: Config, seeds, experiment_dir: StoragePath, train_indices, panel_path):
    return grid_tuner(trial_trainable(run_spec(cfg, experiment_dir, train_indices, panel_path)),
                      {"seed": tune.grid_search([int(s) for s in seeds])}, cfg, experiment_dir)


def grid_tuner(trainable, param_space: dict, cfg: Config, experiment_dir: StoragePath):
    """One trial per point of ``param_space``'s grid, as many at once as :func:`seeds_at_once`,
    stored at ``experiment_dir`` (a folder or a URI); Tune's metric is ``val_sharpe`` (no scheduler
    compares trials)."""
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric="val_sharpe", mode="max", num_samples=1,
            max_concurrent_trials=seeds_at_once(cfg),
            # A finished trial's process runs the next trial: its imports (torch, Ray Train) are
            # paid once per slot, not once per trial (~9 s each on 2 cores, docs/performance.md).
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=experiment_dir.name,
            **ray_cluster.ray_storage(experiment_dir.parent),
            failure_config=tune.FailureConfig(max_failures=cfg.ensemble.max_failures),
            verbose=1,
        ),
    )


def restore_tuner(cfg: Config, experiment_dir: StoragePath, train_indices, panel_path):
    return restore_grid(trial_trainable(run_spec(cfg, experiment_dir, train_indices, panel_path)), experiment_dir)


def restore_grid(trainable, experiment_dir: StoragePath):
    """The interrupted Tune experiment at ``experiment_dir`` (a folder or a URI), its errored trials
    to be run again."""
    fs, path = fs_and_path(experiment_dir)
    if not tune.Tuner.can_restore(path, storage_filesystem=fs):
        raise ConfigError(f"--resume: {experiment_dir} holds no Tune experiment to restore; drop --resume to start one.")
    return tune.Tuner.restore(path, trainable=trainable, resume_errored=True, storage_filesystem=fs)


def parse_args(argv=None) -> argparse.Namespace:
    p = CliParser(prog="python -m ray_jobs.ensemble", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="YAML config")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default: ensemble.seeds)")
    p.add_argument("--storage", default=None,
                   help="storage root: a folder or a URI such as s3://BUCKET/runs (default: ensemble.storage_path)")
    p.add_argument("--shared-mount", action="store_true",
                   help="--storage is a folder on a mount every node shares (EFS, NFS): allowed on a cluster of "
                        "several nodes, after a check that every node sees it")
    p.add_argument("--name", default=None, help="experiment name (default: ensemble.name)")
    p.add_argument("--data", default=None, help="Parquet factor panel (default: the embedded synthetic panel)")
    p.add_argument("--resume", action="store_true", help="restore an interrupted experiment and finish it")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set training.device=cpu")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray cluster (default: all)")
    return p.parse_args(argv)


def experiment_path(cfg: Config, args) -> StoragePath:
    return as_path(args.storage or cfg.ensemble.storage_path).resolve() / (args.name or cfg.ensemble.name)


def run(args) -> StoragePath:
    cfg = load_config(args.config, args.overrides)
    seeds = tuple(args.seeds) if args.seeds else cfg.ensemble.seeds
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds {list(seeds)}: seeds must be distinct.")
    experiment_dir = experiment_path(cfg, args)
    if experiment_dir.exists() and not args.resume and any(experiment_dir.iterdir()):
        raise ConfigError(
            f"{experiment_dir} already holds an experiment; pass --resume to finish it, or choose another --name."
        )
    if not os.environ.get("RAY_ADDRESS"):
        check_device(cfg.training.device, cfg.training.precision)
    cfg, panel_path = pin_panel(cfg, args.data)
    prepared = prepare(cfg, panel_path)  # validates the panel before any seed starts
    print(f"ensemble {experiment_dir.name}: seeds {list(seeds)}; panel {prepared.panel.fingerprint[:12]}; "
          f"train/val/test decisions {len(prepared.splits.train)}/{len(prepared.splits.val)}/{len(prepared.splits.test)}")
    ensure_writable(experiment_dir)
    with ray_cluster.ray_session(experiment_dir, num_cpus=args.num_cpus):
        ray_cluster.check_shared_storage(experiment_dir.parent, args.shared_mount)
        check_cluster_devices(cfg)
        for run_dir in sorted((experiment_dir / SEEDS_DIR).glob("seed_*")):
            clear_failure(run_dir)  # --resume: a seed that stopped on an error gets a new attempt
        if args.resume:
            tuner = restore_tuner(cfg, experiment_dir, prepared.splits.train, panel_path)
        else:
            tuner = build_tuner(cfg, seeds, experiment_dir, prepared.splits.train, panel_path)
        grid = tuner.fit()
    return _summarise(grid, experiment_dir)


def _summarise(grid, experiment_dir: StoragePath) -> StoragePath:
    failed = [(int(r.config["seed"]), r.error) for r in grid if r.error is not None]
    table = seed_table(experiment_dir)
    print("\n" + table.to_string(index=False))
    if failed:
        seed, error = failed[0]
        first = seed_failure(experiment_dir / SEEDS_DIR / seed_run_name(seed), seed, error)
        raise type(first)(
            f"{len(failed)} seed(s) failed ({[s for s, _ in failed]}); first: {first}. The other seeds' "
            f"checkpoints are kept; fix the cause and finish with --resume."
        )
    print(f"\nexperiment: {experiment_dir}\nanalyse:    python -m ray_jobs.analyze {shlex.quote(str(experiment_dir))}")
    return experiment_dir


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return run_cli(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
