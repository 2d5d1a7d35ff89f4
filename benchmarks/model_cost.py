"""FLOPs and activation memory of one training step of a config's encoder + heads, measured on CPU.

  python -m benchmarks.model_cost --config configs/model_config_h100_full.yaml [--batch 2]

Counts the FLOPs of one forward + backward of the encoder and heads (``torch.utils.flop_counter``,
matmuls and convolutions) at a small batch and scales them to the config's batch (both are linear
in the batch), and measures the peak resident memory that the step adds on the CPU (float32), with
activation checkpointing as configured and the other way round.  Prints what that implies for the
config's batch in bf16 and an epoch time at an assumed sustained throughput.  The portfolio solve
is not included (float64, a few ms per step; docs/performance.md).
"""

from __future__ import annotations

import contextlib
import json
import resource
import subprocess
import sys
from pathlib import Path

from core.cli import CliParser, run_cli

CPU_OVERRIDES = ["training.device=cpu", "training.precision=float32", "training.compile=false",
                 "resources.gpus_per_worker=0"]
"""The config as it runs on this CPU (the shapes stay the config's)."""
SUSTAINED_TFLOPS = 200.0
"""Assumed sustained bf16 throughput of one H100 on these small (hidden 1024) matmuls: about a
fifth of the dense peak; a guess to be replaced by the GPU check's measurement."""


def measure(config: str, batch: int, checkpointing: bool, count_flops: bool) -> dict:
    """One fwd + bwd step at ``batch`` in this process: FLOPs (if counted) and the peak RSS increase.

    The memory pass runs without the FLOP counter (it would hold extra references)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from core.config import load_config
    from model.encoder import XLSTMEncoder
    from model.spec import ModelSpec
    from model.heads import FactorHeads, MomentHeads

    torch.set_num_threads(1)
    cfg = load_config(config, [*CPU_OVERRIDES, f"model.encoder.activation_checkpointing={str(checkpointing).lower()}"])
    enc, d = cfg.model.encoder, cfg.data
    encoder = XLSTMEncoder(ModelSpec.of(cfg), "cpu").train()
    heads_cls = FactorHeads if enc.layout == "factorwise" else MomentHeads
    heads = heads_cls(enc.hidden_dim, d.num_factors, cfg.model.heads.cov_rank, 1e-6, d.prediction_horizon)
    x = torch.randn(batch, d.lookback_days, d.num_factors, d.num_features)
    params = sum(p.numel() for p in encoder.parameters()) + sum(p.numel() for p in heads.parameters())
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    counter = FlopCounterMode(display=False) if count_flops else contextlib.nullcontext()
    with counter:
        mu, cov_factor, cov_diag = heads(encoder(x))
        (mu.sum() + cov_factor.sum() + cov_diag.sum()).backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    tokens = batch * d.num_factors * d.lookback_days // enc.patch_days if enc.layout == "factorwise" else \
        batch * d.lookback_days
    return {"flops": counter.get_total_flops() if count_flops else None, "peak_increase_bytes": peak - base,
            "params": params, "tokens": tokens, "batch": batch}


def _measure_in_subprocess(config: str, batch: int, checkpointing: bool, count_flops: bool) -> dict:
    # A fresh process per measurement: ru_maxrss is a high-water mark.
    out = subprocess.run([sys.executable, "-m", "benchmarks.model_cost", "--config", config, "--batch", str(batch),
                          "--one", f"{checkpointing},{count_flops}"], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(args) -> None:
    from data import prepare
    from core.config import load_config

    cfg = load_config(args.config, CPU_OVERRIDES)
    tr, enc = cfg.training, cfg.model.encoder
    small, large = args.batch, 3 * args.batch
    flops = _measure_in_subprocess(args.config, small, enc.activation_checkpointing, True)
    scale = tr.batch_size / small
    flops_step = flops["flops"] * scale
    steps = len(prepare(cfg).splits.train) // tr.batch_size  # one pass over the training windows
    print(f"config {args.config}: layout {enc.layout}, patch {enc.patch_days} days, hidden {enc.hidden_dim}, "
          f"{enc.num_layers} layers, {flops['params'] / 1e6:.1f} M parameters (encoder + heads)")
    print(f"tokens per step (batch {tr.batch_size}): {flops['tokens'] * scale:,.0f}")
    print(f"FLOPs per training step (fwd + bwd{' + recompute' if enc.activation_checkpointing else ''}): "
          f"{flops_step / 1e12:.1f} TFLOP")
    for ckpt in (enc.activation_checkpointing, not enc.activation_checkpointing):
        lo = _measure_in_subprocess(args.config, small, ckpt, False)["peak_increase_bytes"]
        hi = _measure_in_subprocess(args.config, large, ckpt, False)["peak_increase_bytes"]
        per_sample = (hi - lo) / (large - small)  # the batch-proportional part: activations
        print(f"activation checkpointing {str(ckpt):5s}: peak +{lo / 2**20:.0f} / +{hi / 2**20:.0f} MiB at batch "
              f"{small} / {large} (float32, CPU): {per_sample / 2**20:.0f} MiB per window -> "
              f"~{per_sample * tr.batch_size / 2 / 2**30:.1f} GiB of activations at batch {tr.batch_size} in bf16")
    epoch_s = flops_step * steps / (SUSTAINED_TFLOPS * 1e12)
    print(f"epoch: {steps} steps x {flops_step / 1e12:.1f} TFLOP at an assumed {SUSTAINED_TFLOPS:.0f} TFLOP/s "
          f"sustained -> ~{epoch_s:.0f} s per seed alone; five seeds sharing one GPU -> ~{5 * epoch_s:.0f} s per "
          "epoch of the ensemble")


def main(argv=None) -> int:
    p = CliParser(prog="python -m benchmarks.model_cost", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="run config (YAML)")
    p.add_argument("--batch", type=int, default=2, help="batch measured on CPU (default 2)")
    p.add_argument("--one", default=None, help=argparse_hidden())
    args = p.parse_args(argv)
    if args.one is not None:
        checkpointing, count_flops = (v == "True" for v in args.one.split(","))
        print(json.dumps(measure(args.config, args.batch, checkpointing, count_flops)))
        return 0
    return run_cli(lambda: run(args))


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    sys.exit(main())
