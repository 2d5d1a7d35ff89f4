"""The gradient norm before clipping at a config's full model shape, on CPU at a small batch.

  python -m benchmarks.grad_health --config configs/model_config_h100_full.yaml --batch 4 --steps 6

The seed's monitoring guide calls training bad when the gradient norm runs above 10. A full run of
``h100_full`` needs its GPU; this runs its model shape (layers, hidden size, lookback, factors) on
the CPU at a small batch in float32, eager: the loss-scale calibration of training
(``ray_jobs.steps.gradient_scales``, two batches), then ``--steps`` training steps through
``ray_jobs.steps.training_step`` (the same forward, losses, backward and clipping as a Ray worker),
printing each step's gradient norm before clipping.  A CUDA config is run with ``training.device``
cpu, ``precision`` float32, ``compile`` false and no GPU share; its batch is ``--batch``.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from core.cli import CliParser, run_cli


def run(config: str, batch: int, steps: int, seed: int, threads: int, overrides: list[str]) -> list[float]:
    from benchmarks.model_cost import CPU_OVERRIDES
    from core.config import load_config
    from data.windows import prepare
    from model.network import XLSTMPortfolio
    from ray_jobs.seed_loop import seed_everything
    from ray_jobs.steps import gradient_scales, make_optimizer, training_step

    torch.set_num_threads(threads)
    cfg = load_config(config, [*CPU_OVERRIDES, f"training.batch_size={batch}", *overrides])
    enc = cfg.model.encoder
    print(f"{config}: {enc.num_layers} layers {list(enc.cell_types)}, hidden {enc.hidden_dim}, lookback "
          f"{cfg.data.lookback_days}, {cfg.data.num_factors} factors; CPU float32, batch {batch}, {threads} thread(s)")
    prepared = prepare(cfg)
    source = prepared.window_source(torch.device("cpu"), cfg.training.target_days)
    seed_everything(seed)
    model = XLSTMPortfolio.from_config(cfg, device="cpu")
    optimizer, _ = make_optimizer(model, cfg)
    start = time.perf_counter()
    scales = gradient_scales(cfg, model, source, prepared.splits.train, seed=seed)
    print("loss scales (gradient norm ~1 per term): "
          + ", ".join(f"{k} {v:.3g}" for k, v in scales.items()) + f"  ({time.perf_counter() - start:.0f} s)")
    rng = np.random.default_rng(seed)
    model.train()
    norms = []
    with tempfile.TemporaryDirectory() as run_dir:
        for step in range(1, steps + 1):
            start = time.perf_counter()
            idx = torch.as_tensor(rng.choice(prepared.splits.train, size=batch, replace=False))
            x, r_daily, r_horizon = source.gather(idx)
            terms, norm = training_step(cfg, model, optimizer, x, r_daily, r_horizon, 1, step, Path(run_dir), scales,
                                        r_target=source.train_target(idx))
            norms.append(norm)
            print(f"step {step}: gradient norm before clipping {norm:.3f}, loss {terms['loss']:.4f} "
                  f"({time.perf_counter() - start:.1f} s)", flush=True)
    print(f"median {statistics.median(norms):.3f}, max {max(norms):.3f} over {steps} steps (bad training: above 10)")
    return norms


def main(argv=None) -> int:
    p = CliParser(prog="python -m benchmarks.grad_health", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="run config (YAML)")
    p.add_argument("--batch", type=int, default=4, help="windows per step (default 4)")
    p.add_argument("--steps", type=int, default=6, help="training steps after the calibration (default 6)")
    p.add_argument("--seed", type=int, default=42, help="model and batch seed (default 42)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    if args.batch < 2 or args.steps < 1:
        p.error(f"--batch {args.batch} / --steps {args.steps}: need a batch of at least 2 and at least one step")
    return run_cli(lambda: run(args.config, args.batch, args.steps, args.seed, args.threads, args.overrides))


if __name__ == "__main__":
    raise SystemExit(main())
