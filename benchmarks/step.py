"""One training step, split into its parts, on the configured device.

  python -m benchmarks.step --config configs/model_config_mac_test.yaml --set training.device=cpu [--threads 1]
  python -m benchmarks.step --config configs/model_config_h100_full.yaml --steps 20 --json out.json

bf16 autocast and torch.compile (encoder + heads) as the config says, as in training.
Parts: data (gathering the windows from the panel held on the device), encoder + heads forward,
portfolio layer forward, loss, portfolio layer + loss backward, encoder backward, optimiser step.
The backward is split with ``torch.autograd.grad`` at the moments (mu, B, d).  Prints a table
(median ms per part, share of the step), samples/s and peak host / device memory; writes JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time

import numpy as np
import torch

from core.config import check_device, load_config


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
    elif device.type == "mps":
        torch.mps.synchronize()


def one_step(cfg, model, optimizer, source, indices, device, timings: dict) -> None:
    from model.losses import compute_losses
    from model.network import solve_device
    from ray_jobs.steps import autocast, equal_weights

    def mark(name, start):
        _sync(device)
        now = time.perf_counter()
        timings.setdefault(name, []).append(now - start)
        return now

    t = time.perf_counter()
    x, r_daily, r_horizon = source.gather(indices)
    t = mark("data", t)
    with autocast(cfg, device):
        mu, cov_factor, cov_diag = model.predict_moments(x)
    t = mark("encoder_forward", t)
    dev = solve_device(device)  # the CPU on MPS (no float64 there)
    w_prev = equal_weights(x.shape[0], cfg.data.num_factors, dev)
    moments = [m.detach().to(dev).requires_grad_(True) for m in (mu, cov_factor, cov_diag)]
    weights = model.portfolio(*(m.double() for m in moments), w_prev)
    r_daily, r_horizon = r_daily.to(dev), r_horizon.to(dev)
    t = mark("portfolio_forward", t)
    losses = compute_losses(*moments, weights, w_prev, r_horizon, r_daily, cfg.training, cfg.portfolio.tc_rate,
                            cfg.data.prediction_horizon)
    t = mark("loss_forward", t)
    grads = torch.autograd.grad(losses["loss"], moments)
    t = mark("portfolio_and_loss_backward", t)
    optimizer.zero_grad(set_to_none=True)
    torch.autograd.backward([mu, cov_factor, cov_diag], [g.to(mu.device) for g in grads])
    t = mark("encoder_backward", t)
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.training.grad_clip_norm)
    optimizer.step()
    mark("optimizer", t)


def run(cfg, steps: int, warmup: int) -> dict:
    from data import prepare
    from model.network import XLSTMPortfolio
    from ray_jobs.steps import make_optimizer

    device = torch.device(check_device(cfg.training.device, cfg.training.precision))
    prepared = prepare(cfg)
    source = prepared.window_source(device)
    torch.manual_seed(0)
    model = XLSTMPortfolio.from_config(cfg, device=device.type).to(device).train()
    if cfg.training.compile:
        model.compile_moments()  # as the seed loop does: encoder + heads, one graph (compiled in warmup)
    optimizer, _ = make_optimizer(model, cfg)
    gen = torch.Generator().manual_seed(0)
    train = torch.as_tensor(np.array(prepared.splits.train))
    timings: dict[str, list[float]] = {}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for i in range(warmup + steps):
        idx = train[torch.randint(len(train), (cfg.training.batch_size,), generator=gen)].to(device)
        one_step(cfg, model, optimizer, source, idx, device, timings if i >= warmup else {})
    parts = {k: statistics.median(v) for k, v in timings.items()}
    total = sum(parts.values())
    return {
        "config": cfg.to_dict(), "device": str(device), "precision": cfg.training.precision,
        "compile": cfg.training.compile, "slstm_backend": model.encoder.slstm_backend, "machine": platform.processor() or platform.machine(),
        "cuda_device": torch.cuda.get_device_name() if device.type == "cuda" else None,
        "threads": torch.get_num_threads(), "steps": steps, "batch_size": cfg.training.batch_size,
        "median_s": parts, "step_s": total, "samples_per_s": cfg.training.batch_size / total,
        "peak_host_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_device_mib": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
        "train_steps_per_epoch": len(train) // cfg.training.batch_size,
    }


def print_table(res: dict) -> None:
    total = res["step_s"]
    print(f"device {res['device']} ({res['cuda_device'] or res['machine']}), {res['threads']} threads, "
          f"batch {res['batch_size']}, median of {res['steps']} steps")
    print(f"{'part':32s} {'ms':>10s} {'share':>7s}")
    for name, sec in res["median_s"].items():
        print(f"{name:32s} {1e3 * sec:10.1f} {100 * sec / total:6.1f}%")
    print(f"{'step':32s} {1e3 * total:10.1f}")
    per_epoch = res["train_steps_per_epoch"] * total
    print(f"samples/s {res['samples_per_s']:.0f}; one pass over the training split "
          f"({res['train_steps_per_epoch']} steps) ~ {per_epoch:.1f} s + validation")
    dev = f", peak device {res['peak_device_mib']:.0f} MiB" if res["peak_device_mib"] is not None else ""
    print(f"peak host RSS {res['peak_host_rss_mib']:.0f} MiB{dev}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.step", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: torch's choice); 1 is what a 1-CPU Ray worker gets")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.overrides)
    res = run(cfg, args.steps, args.warmup)
    print_table(res)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
