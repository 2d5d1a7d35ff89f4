"""Training steps with upstream xlstm's conv / per-head norm against model.fast_layers, side by side.

  python -m benchmarks.fast_layers --config configs/model_config_cpu_demo.yaml [--threads 1] [--rounds 5]

Builds the config's model once, copies it, and switches the copy's ``FastCausalConv1d`` and
``FastMultiHeadLayerNorm`` back to upstream's classes (same parameters).  Then it alternates one
real training step (``benchmarks.step.one_step``: data, encoder, portfolio layer, loss, backward,
optimiser) of each, on the same batches, ``--rounds`` times after a warm-up, and prints the median
step time and the encoder's forward and backward of each, with the ratio.  Alternating the two in
one process means a busy machine slows both alike.
"""

from __future__ import annotations

import statistics
import sys

import numpy as np
import torch

from core.cli import CliParser, run_cli
from core.config import load_config


def run(args) -> dict:
    from benchmarks.step import one_step
    from data import prepare
    from model.fast_layers import upstream_layers
    from model.network import XLSTMPortfolio
    from ray_jobs.steps import make_optimizer

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config, [*args.overrides, "training.device=cpu", "training.compile=false"])
    prepared = prepare(cfg)
    source = prepared.window_source("cpu")
    torch.manual_seed(0)
    fast = XLSTMPortfolio.from_config(cfg).train()
    models = {"fast layers": fast, "upstream layers": upstream_layers(fast)}
    optimizers = {name: make_optimizer(m, cfg)[0] for name, m in models.items()}
    train = torch.as_tensor(np.array(prepared.splits.train))
    gen = torch.Generator().manual_seed(0)
    timings = {name: {} for name in models}
    device = torch.device("cpu")
    for i in range(args.warmup + args.rounds):
        idx = train[torch.randint(len(train), (cfg.training.batch_size,), generator=gen)]
        for name, model in models.items():
            one_step(cfg, model, optimizers[name], source, idx, device, timings[name] if i >= args.warmup else {})
    result = {}
    for name, parts in timings.items():
        med = {k: statistics.median(v) for k, v in parts.items()}
        result[name] = {"step_s": sum(med.values()), "encoder_forward_s": med["encoder_forward"],
                        "encoder_backward_s": med["encoder_backward"]}
    print(f"{args.config}: batch {cfg.training.batch_size}, {torch.get_num_threads()} thread(s), "
          f"median of {args.rounds} alternating rounds")
    print(f"{'':18s} {'step ms':>9s} {'enc fwd ms':>11s} {'enc bwd ms':>11s}")
    for name, r in result.items():
        print(f"{name:18s} {1e3 * r['step_s']:9.0f} {1e3 * r['encoder_forward_s']:11.0f} {1e3 * r['encoder_backward_s']:11.0f}")
    speedup = result["upstream layers"]["step_s"] / result["fast layers"]["step_s"]
    print(f"step speed-up: {speedup:.2f}x")
    return result


def main(argv=None) -> int:
    p = CliParser(prog="python -m benchmarks.fast_layers", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds (one step of each per round)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as a 1-CPU Ray worker)")
    args = p.parse_args(argv)
    return run_cli(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
