"""The C allocator's settings for a CPU training step, side by side (issue 13).

  python -m benchmarks.allocator [--config configs/model_config_cpu_demo.yaml] [--steps 6] [--rounds 3]

A CPU training step of the factorwise encoder allocates and frees tensors of 10-50 MB (the demo
config: 6,656 sequences of 5 tokens).  glibc's malloc serves blocks above its mmap threshold with
fresh ``mmap`` pages and returns them on free, so every step faults its working set in again
(~35,000 minor page faults a demo step).  ``ray_jobs.ray_cluster.ALLOCATOR_ENV`` keeps freed
memory in the heap instead; a local cluster's processes start with it.

Each round runs one child process per arm, alternating (the arms see the same machine load):
``default`` (glibc's own settings: the variables removed) and ``heap`` (``ALLOCATOR_ENV``).  A child
builds the model (``--seed``), trains ``--warmup`` steps, then times ``--steps`` steps of the real
``training_step`` on one thread and prints wall and CPU seconds per step, minor page faults per
step, peak resident memory, and a checksum of the trained parameters: the allocator must not
change a single bit of them (``identical`` below).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

from core.cli import CliParser, run_cli


def _child(args) -> dict:
    from pathlib import Path
    import tempfile

    import torch

    from core.config import load_config
    from data import prepare
    from model.network import XLSTMPortfolio
    from ray_jobs.seed_loop import seed_everything
    from ray_jobs.steps import make_optimizer, training_step

    torch.set_num_threads(1)
    cfg = load_config(args.config, ["training.device=cpu"])
    prep = prepare(cfg)
    source = prep.window_source("cpu")
    seed_everything(args.seed)
    model = XLSTMPortfolio.from_config(cfg, "cpu")
    optimizer, _ = make_optimizer(model, cfg)
    train, batch = prep.splits.train, cfg.training.batch_size
    run_dir = Path(tempfile.mkdtemp(prefix="alloc_"))

    def step(i: int) -> None:
        idx = torch.as_tensor(train[(i * batch) % (len(train) - batch):][:batch].copy())
        x, r_daily, r_horizon = source.gather(idx)
        training_step(cfg, model, optimizer, x, r_daily, r_horizon, 1, i + 1, run_dir, None)

    for i in range(args.warmup):
        step(i)
    faults, wall, cpu = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter(), time.process_time()
    for i in range(args.warmup, args.warmup + args.steps):
        step(i)
    n = args.steps
    return {"s_per_step": (time.perf_counter() - wall) / n, "cpu_per_step": (time.process_time() - cpu) / n,
            "faults_per_step": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / n,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "checksum": repr([float(p.double().sum()) for p in model.parameters()])}


def _arm_env(arm: str) -> dict:
    from ray_jobs.ray_cluster import ALLOCATOR_ENV

    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    if arm == "heap":
        env.update(ALLOCATOR_ENV)
    return env


def main(argv=None) -> int:
    p = CliParser(prog="python -m benchmarks.allocator", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/model_config_cpu_demo.yaml", help="run config (default: the demo's)")
    p.add_argument("--steps", type=int, default=6, help="timed steps per child (default 6)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds of the two arms (default 3)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args)), flush=True)
        return 0
    arms, rows = ("default", "heap"), {"default": [], "heap": []}
    base = [sys.executable, "-m", "benchmarks.allocator", "--child", "--config", args.config,
            "--steps", str(args.steps), "--warmup", str(args.warmup), "--seed", str(args.seed)]
    for r in range(args.rounds):
        for arm in arms if r % 2 == 0 else arms[::-1]:
            out = subprocess.run(base, env=_arm_env(arm), capture_output=True, text=True, check=True)
            rows[arm].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"round {r + 1} {arm:7s} " + " ".join(f"{k} {v:.3f}" for k, v in rows[arm][-1].items()
                                                         if k != "checksum"), flush=True)
    med = {arm: {k: statistics.median(row[k] for row in rows[arm]) for k in rows[arm][0] if k != "checksum"}
           for arm in arms}
    identical = len({row["checksum"] for arm in arms for row in rows[arm]}) == 1
    print(f"\n{args.config}, {args.steps} steps a child, medians of {args.rounds} alternating rounds")
    print("| | s / step | CPU s / step | minor faults / step | peak RSS MB |\n|---|---:|---:|---:|---:|")
    for arm in arms:
        m = med[arm]
        print(f"| {arm} | {m['s_per_step']:.3f} | {m['cpu_per_step']:.3f} | {m['faults_per_step']:.0f} | {m['peak_rss_mb']:.0f} |")
    print(f"default / heap: wall {med['default']['s_per_step'] / med['heap']['s_per_step']:.2f}x, "
          f"CPU {med['default']['cpu_per_step'] / med['heap']['cpu_per_step']:.2f}x; "
          f"trained parameters bit-identical across every child: {identical}")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(run_cli(main))
