"""Walk-forward evaluation: one Ray Tune trial per (fold, seed), then one out-of-sample backtest.

  python -m ray_jobs.walkforward --config configs/model_config_cpu_demo.yaml --folds 3 --storage runs/wf --name demo
  python -m ray_jobs.walkforward ... --resume          # finish an interrupted run

Fold j trains on the decisions up to its cut (purged by the horizon), early-stops on the next
span and trades the span after that (:mod:`data.folds`); the trading spans tile the out-of-sample
period.  Every (fold, seed) is one trial of the ensemble's machinery (:mod:`ray_jobs.ensemble`:
a light function fitting that seed's TorchTrainer, packed by the cluster's resources); its run
folder is ``NAME/fold_<j>/seed_<s>``.  A failed trial fails the run loudly, naming it, once every
other trial has finished; ``--resume`` runs the failed or unfinished ones again from their
checkpoints.  The folds' ensembles then trade their spans, and the joined weights are backtested
as one series against the baselines (:mod:`ray_jobs.walkforward_report`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import dataclass

import numpy as np
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from core.cli import CliParser, run_cli
from core.config import Config, check_device, load_config
from core.errors import ConfigError
from core.files import write_text_atomic
from core.storage import StoragePath, as_path
from data.folds import WINDOWS, FoldPlan, folds_for
from data.windows import pin_panel, load_panel, prepare
from ray_jobs import ray_cluster
from ray_jobs.backtest import BASELINE_POLICIES
from ray_jobs.ensemble import grid_tuner, restore_grid, trial_trainable
from ray_jobs.run_folder import clear_failure, ensure_writable, seed_failure, seed_run_name
from ray_jobs.seed_run import build_trainer, check_cluster_devices

BASELINE_KEYS = {name.replace(" ", "-"): name for name in BASELINE_POLICIES}  # command-line spelling
PLAN_FILE = "walkforward.json"  # the folds, window and seeds of a run: --resume must match them


def fold_dir_name(fold: int) -> str:
    return f"fold_{fold}"


@dataclass(frozen=True)
class FoldRun:
    """What every (fold, seed) trial shares through ``tune.with_parameters``."""

    cfg: Config
    experiment_dir: StoragePath  # absolute folder or URI; fold j's seeds train in experiment_dir / fold_<j> / seed_<s>
    plan: FoldPlan
    panel_path: str | None  # absolute Parquet path, or None for the embedded synthetic panel


def fold_seed_trial(trial_config: dict, run: FoldRun) -> None:
    """Tune trainable: fit one seed's TorchTrainer on one fold.  ``trial_config``: {"fold", "seed"}."""
    fold = int(trial_config["fold"])
    splits = run.plan.folds[fold]
    trainer = build_trainer(
        run.cfg, int(trial_config["seed"]), run.experiment_dir / fold_dir_name(fold), splits.train,
        panel_path=run.panel_path, callbacks=[TuneReportCallback()], splits=splits,
    )
    trainer.fit()


def parse_args(argv=None) -> argparse.Namespace:
    p = CliParser(prog="python -m ray_jobs.walkforward", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="YAML config")
    p.add_argument("--folds", type=int, required=True, help="number of walk-forward folds (retrains)")
    p.add_argument("--window", choices=WINDOWS, default="expanding",
                   help="train from the first date (expanding, default) or on a fixed length (rolling)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds per fold (default: ensemble.seeds)")
    p.add_argument("--storage", required=True, help="storage root: a folder or a URI such as s3://BUCKET/runs")
    p.add_argument("--shared-mount", action="store_true",
                   help="--storage is a folder on a mount every node shares (EFS, NFS): allowed on a cluster of "
                        "several nodes, after a check that every node sees it")
    p.add_argument("--name", required=True, help="run name: the run lives in STORAGE/NAME")
    p.add_argument("--data", default=None, help="Parquet factor panel (default: data.panel_path, else synthetic)")
    p.add_argument("--resume", action="store_true", help="finish an interrupted run (same --folds/--window/--seeds/--set and panel)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set training.max_epochs=5")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray cluster (default: all)")
    p.add_argument("--device", default="cpu", help="device for the out-of-sample predictions (default cpu)")
    p.add_argument("--baselines", nargs="+", default=None, choices=list(BASELINE_KEYS), metavar="NAME",
                   help="baselines to score (default all: " + " ".join(BASELINE_KEYS) + "); 1/N always")
    return p.parse_args(argv)


def _check_plan_record(experiment_dir: StoragePath, record: dict, resume: bool) -> None:
    path = experiment_dir / PLAN_FILE
    if not resume:
        if experiment_dir.exists() and any(experiment_dir.iterdir()):
            raise ConfigError(f"{experiment_dir} already holds a run; pass --resume to finish it, or choose another --name.")
        return
    if not path.exists():
        raise ConfigError(f"--resume: {experiment_dir} holds no walk-forward run ({PLAN_FILE} missing); drop --resume.")
    stored = json.loads(path.read_text())
    if stored != record:
        raise ConfigError(f"--resume with {record}, but {experiment_dir} was started with {stored}: "
                          "resume with the same --folds, --window, --seeds, --set values and panel (--data).")


def plan_run(args) -> tuple[Config, FoldPlan, tuple[int, ...], StoragePath, str | None, np.ndarray]:
    """Config, fold plan, seeds, run folder, panel path and the panel's dates, every check done
    before anything is written."""
    cfg = load_config(args.config, args.overrides)
    seeds = tuple(args.seeds) if args.seeds else cfg.ensemble.seeds
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds {list(seeds)}: seeds must be distinct.")
    experiment_dir = as_path(args.storage).resolve() / args.name
    cfg, panel_path = pin_panel(cfg, args.data)
    panel = load_panel(cfg.data, panel_path)
    record = {"folds": args.folds, "window": args.window, "seeds": list(seeds), "overrides": list(args.overrides),
              "panel": panel_path, "panel_fingerprint": panel.fingerprint}  # a resume may not switch panels
    _check_plan_record(experiment_dir, record, args.resume)
    if not os.environ.get("RAY_ADDRESS"):
        check_device(cfg.training.device, cfg.training.precision)
    plan = folds_for(len(panel.dates), cfg.data, args.folds, args.window)
    for fold in plan.folds:
        prepare(cfg, panel_path, splits=fold)  # each fold's normaliser fits (no constant feature)
    ensure_writable(experiment_dir)
    write_text_atomic(experiment_dir / PLAN_FILE, json.dumps(record, indent=2))
    return cfg, plan, seeds, experiment_dir, panel_path, panel.dates


def describe_plan(plan: FoldPlan, dates) -> str:
    lines = []
    for j, f in enumerate(plan.folds):
        lines.append(f"fold {j}: train {dates[f.train[0]]}..{dates[f.train[-1]]} ({len(f.train)}), "
                     f"val {dates[f.val[0]]}..{dates[f.val[-1]]} ({len(f.val)}), "
                     f"trade {dates[f.test[0]]}..{dates[f.test[-1]]} ({len(plan.rebalances(j))} rebalances)")
    return "\n".join(lines)


def train_folds(cfg: Config, plan: FoldPlan, seeds, experiment_dir: StoragePath, panel_path, resume: bool,
                num_cpus=None, shared_mount: bool = False) -> None:
    """Every (fold, seed) trial to the end; raises the first failure's typed error, naming the trial."""
    for run_dir in sorted(experiment_dir.glob("fold_*/seed_*")):
        clear_failure(run_dir)  # --resume: a trial that stopped on an error gets a new attempt
    trainable = trial_trainable(FoldRun(cfg, experiment_dir, plan, panel_path), trial=fold_seed_trial)
    with ray_cluster.ray_session(experiment_dir, num_cpus=num_cpus):
        ray_cluster.check_shared_storage(experiment_dir.parent, shared_mount)
        check_cluster_devices(cfg)
        if resume:
            tuner = restore_grid(trainable, experiment_dir)
        else:
            space = {"fold": tune.grid_search(list(range(len(plan)))), "seed": tune.grid_search([int(s) for s in seeds])}
            tuner = grid_tuner(trainable, space, cfg, experiment_dir)
        grid = tuner.fit()
    failed = sorted((int(r.config["fold"]), int(r.config["seed"]), r.error) for r in grid if r.error is not None)
    if failed:
        fold, seed, error = failed[0]
        first = seed_failure(experiment_dir / fold_dir_name(fold) / seed_run_name(seed), seed, error)
        raise type(first)(
            f"{len(failed)} walk-forward trial(s) failed ({[(f, s) for f, s, _ in failed]} as (fold, seed)); "
            f"first: fold {fold}, {first}. No fold is scored without all its seeds: fix the cause and finish "
            f"with --resume (the finished trials are kept)."
        )


def run(args) -> StoragePath:
    """Train every (fold, seed), then write the out-of-sample report to ``STORAGE/NAME/report``."""
    from ray_jobs.walkforward_report import walk_forward_report

    cfg, plan, seeds, experiment_dir, panel_path, dates = plan_run(args)
    print(f"walk-forward {experiment_dir.name}: {len(plan)} folds ({args.window}) x seeds {list(seeds)}\n"
          + describe_plan(plan, dates))
    train_folds(cfg, plan, seeds, experiment_dir, panel_path, args.resume, args.num_cpus, args.shared_mount)
    baselines = None if args.baselines is None else [BASELINE_KEYS[b] for b in args.baselines]
    report = walk_forward_report(experiment_dir, plan, panel_path, args.device, baselines)
    print(f"\nreport: {report}")
    return experiment_dir


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return run_cli(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
