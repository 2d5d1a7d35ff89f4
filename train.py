"""Train one seed of the xLSTM portfolio model with Ray Train's TorchTrainer.

Examples
--------
  python train.py --config configs/model_config_cpu_smoke.yaml --seed 42 --output runs/smoke
  python train.py --config configs/model_config_mac_test.yaml --set training.device=cpu
  RAY_ADDRESS=127.0.0.1:6379 python train.py --config configs/model_config_h100_full.yaml --seed 42 \
      --output s3://BUCKET/runs/seeds
"""

from __future__ import annotations

import argparse
import logging
import sys
import shlex

from core.cli import CliParser, run_cli
from core.config import check_device, load_config
from core.storage import as_path


def parse_args(argv=None) -> argparse.Namespace:
    p = CliParser(
        prog="python train.py",
        description="Train one seed through Ray Train's TorchTrainer (a local 127.0.0.1 cluster, or RAY_ADDRESS).",
    )
    p.add_argument("--config", required=True, help="YAML config, e.g. configs/model_config_cpu_smoke.yaml")
    p.add_argument("--seed", type=int, default=None, help="seed (default: the first of ensemble.seeds)")
    p.add_argument("--output", default=None, help="output folder or URI such as s3://BUCKET/runs (default: "
                   "training.output_dir); the run goes to OUTPUT/seed_<N>")
    p.add_argument("--shared-mount", action="store_true",
                   help="--output is a folder on a mount every node shares (EFS, NFS): allowed on a cluster of several nodes")
    p.add_argument("--data", default=None, help="Parquet factor panel (default: data.panel_path, else the embedded synthetic panel)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set training.device=cpu (repeatable)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray cluster (default: all)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return run_cli(lambda: run(args))


def run(args: argparse.Namespace) -> None:
    import os

    cfg = load_config(args.config, args.overrides)
    seed = args.seed if args.seed is not None else cfg.ensemble.seeds[0]
    output = as_path(args.output or cfg.training.output_dir).resolve()
    panel_path = args.data or cfg.data.panel_path
    if not os.environ.get("RAY_ADDRESS"):
        check_device(cfg.training.device, cfg.training.precision)  # the local cluster is this machine
    from ray_jobs.run_folder import seed_run_name
    from ray_jobs.seed_run import train_one_seed

    info, _ = train_one_seed(cfg, seed, output, panel_path, num_cpus=args.num_cpus, shared_mount=args.shared_mount)
    run_dir = output / seed_run_name(seed)
    print(f"\nseed {seed}: best val_sharpe {info['best_val_sharpe']:+.4f} at epoch {info['best_epoch']} "
          f"of {info['epochs_run']} ({info['stop_reason']})")
    print(f"best checkpoint: {info['best_checkpoint']}")
    print(f"TensorBoard:     tensorboard --logdir {shlex.quote(str(run_dir / 'tensorboard'))}")


if __name__ == "__main__":
    sys.exit(main())
