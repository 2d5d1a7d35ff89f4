"""Side-by-side benchmark of the portfolio layer's backends (speed and accuracy).

    python -m benchmarks.portfolio_layer --batch 128 --n 104 --k 8 --repeats 3 --json out.json

For long_only and long_short it times forward and backward (median of --repeats, interleaved
so that machine noise hits every backend alike) of cvxpylayers with ECOS / Clarabel / SCS
(tuned tolerances, and SCS with its defaults) and of the torch backend, on the same seeded random
problems.  Accuracy: max |w - w_ref| against cvxpy + Clarabel solved directly at tol 1e-10, and
the gradient of L = sum(v * w) checked two ways: against central finite differences along a
random direction (forward solves of the exact torch backend, eps = 1e-6; worst element
relative to the largest |FD|, and the median per-element relative error) and against the torch
backend's gradient (max abs difference / max abs).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import time
import warnings

import numpy as np
import torch

from core.config import PortfolioConfig
from core.errors import SolverError
from portfolio.constraints import check_solution
from portfolio.cvx import solve_reference
from portfolio.layer import PortfolioLayer

BACKENDS = ["cvxpylayers/ECOS", "cvxpylayers/Clarabel", "cvxpylayers/SCS-default", "cvxpylayers/SCS", "torch"]


def make_problem(batch: int, n: int, k: int, constraint: str, seed: int, idio_scale: float = 1.0):
    """Seeded random inputs: mu (B, n), cov_factor (B, n, k), cov_diag (B, n), w_prev (B, n).

    Factor variance per asset ~0.0025, idiosyncratic 0.001-0.005 times idio_scale.
    """
    g = torch.Generator().manual_seed(seed)
    mu = 0.003 * torch.randn(batch, n, generator=g, dtype=torch.float64)
    factor = 0.05 / k**0.5 * torch.randn(batch, n, k, generator=g, dtype=torch.float64)
    diag = (1e-3 + 4e-3 * torch.rand(batch, n, generator=g, dtype=torch.float64)) * idio_scale
    prev = torch.rand(batch, n, generator=g, dtype=torch.float64)
    if constraint == "long_short":
        prev = prev - 0.3
    prev = prev / prev.sum(1, keepdim=True)
    return mu, factor, diag, prev


def build_layer(name: str, n: int, k: int, cfg: PortfolioConfig) -> PortfolioLayer:
    if name == "torch":
        return PortfolioLayer(n, k, dataclasses.replace(cfg, solver="torch"))
    method = name.split("/")[1].split("-")[0]
    layer = PortfolioLayer(n, k, dataclasses.replace(cfg, solver="cvxpylayers", solve_method=method))
    if name.endswith("-default"):
        layer._cvx.solver_args = {"solve_method": method}  # the solver's own default tolerances
    return layer


def run_once(layer, inputs, v):
    """(weights, grads (mu, F, d), forward s, backward s); the solution check is not timed."""
    mu, factor, diag, prev = [x.clone().requires_grad_(i < 3) for i, x in enumerate(inputs)]
    t0 = time.perf_counter()
    w = layer.solve_unchecked(mu, factor, diag, prev)
    t1 = time.perf_counter()
    (w * v).sum().backward()
    t2 = time.perf_counter()
    return w.detach(), [mu.grad, factor.grad, diag.grad], t1 - t0, t2 - t1


def fd_directional(torch_layer, inputs, v, direction, eps=1e-6):
    """Per-element central difference of L_b = v_b . w_b along `direction` (exact torch solves)."""
    with torch.no_grad():
        plus = [x + eps * dx for x, dx in zip(inputs[:3], direction)] + [inputs[3]]
        minus = [x - eps * dx for x, dx in zip(inputs[:3], direction)] + [inputs[3]]
        return ((torch_layer(*plus) - torch_layer(*minus)) * v).sum(1) / (2 * eps)  # (B,)


def bench_constraint(args, constraint: str) -> list[dict]:
    cfg = PortfolioConfig(constraint=constraint, max_weight=args.max_weight if constraint == "long_only" else None,
                          leverage=args.leverage, risk_aversion=args.risk_aversion, tc_rate=args.tc_rate)
    inputs = make_problem(args.batch, args.n, args.k, constraint, args.seed, args.idio_scale)
    g = torch.Generator().manual_seed(args.seed + 1)
    v = torch.randn(args.batch, args.n, generator=g, dtype=torch.float64)
    direction = [torch.randn(x.shape, generator=g, dtype=torch.float64) * x.abs().mean() for x in inputs[:3]]
    print(f"[{constraint}] reference: cvxpy + Clarabel direct (tol 1e-10), {args.batch} problems ...", flush=True)
    w_ref = torch.from_numpy(solve_reference(*inputs, cfg))
    layers = {name: build_layer(name, args.n, args.k, cfg) for name in args.backends}
    times = {name: ([], []) for name in args.backends}
    results = {}
    for r in range(args.repeats):
        for name, layer in layers.items():
            print(f"[{constraint}] repeat {r + 1}/{args.repeats}: {name} ...", flush=True)
            w, grads, fwd, bwd = run_once(layer, inputs, v)
            times[name][0].append(fwd), times[name][1].append(bwd)
            results[name] = (w, grads)
    torch_layer = layers.get("torch") or build_layer("torch", args.n, args.k, cfg)
    fd = fd_directional(torch_layer, inputs, v, direction)
    g_torch = results["torch"][1] if "torch" in results else None
    rows = []
    for name in args.backends:
        w, grads = results[name]
        try:
            check_solution(w, inputs[3], cfg, backend=name)
            feasible = "ok"
        except SolverError as exc:
            feasible = str(exc).split(": ", 1)[1].split(" (feasibility_tol")[0]
        dd = sum((gr * dx).flatten(1).sum(1) for gr, dx in zip(grads, direction))  # (B,)
        row = {
            "constraint": constraint, "backend": name,
            "forward_s": statistics.median(times[name][0]), "backward_s": statistics.median(times[name][1]),
            "max_abs_w_diff_vs_clarabel": float((w - w_ref).abs().max()),
            "solution_check": feasible,
            # max over elements, relative to the largest |FD| (elements whose derivative is ~0,
            # e.g. no-trade solutions, would make a per-element ratio meaningless)
            "grad_rel_err_vs_fd_max": float((dd - fd).abs().max() / fd.abs().max()),
            "grad_rel_err_vs_fd_median": float(((dd - fd).abs() / fd.abs())[fd.abs() > 1e-6 * fd.abs().max()].median()),
        }
        if g_torch is not None:
            row["grad_rel_diff_vs_torch"] = max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(grads, g_torch))
        rows.append(row)
    base = next((r for r in rows if r["backend"] == "cvxpylayers/ECOS"), None)
    for row in rows:
        total = row["forward_s"] + row["backward_s"]
        row["speedup_vs_ecos"] = (base["forward_s"] + base["backward_s"]) / total if base else None
    return rows


def print_table(rows: list[dict]) -> None:
    """One line per (constraint, backend)."""
    head = (f"{'constraint':11s} {'backend':26s} {'fwd ms':>9s} {'bwd ms':>9s} {'x ECOS':>7s} {'|w-w_ref|':>10s}"
            f" {'grad/FD max':>11s} {'grad/FD med':>11s} {'vs torch':>9s}  check")
    print(head)
    print("-" * len(head))
    for r in rows:
        speed = f"{r['speedup_vs_ecos']:.1f}" if r.get("speedup_vs_ecos") else "-"
        vs_torch = f"{r['grad_rel_diff_vs_torch']:.1e}" if "grad_rel_diff_vs_torch" in r else "-"
        print(f"{r['constraint']:11s} {r['backend']:26s} {r['forward_s'] * 1e3:9.1f} {r['backward_s'] * 1e3:9.1f}"
              f" {speed:>7s} {r['max_abs_w_diff_vs_clarabel']:10.1e} {r['grad_rel_err_vs_fd_max']:11.1e}"
              f" {r['grad_rel_err_vs_fd_median']:11.1e} {vs_torch:>9s}  {r['solution_check'][:60]}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=128, help="batch size B (default 128)")
    ap.add_argument("--n", type=int, default=104, help="assets n (default 104)")
    ap.add_argument("--k", type=int, default=8, help="covariance factor rank k (default 8)")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats per backend; the median is reported")
    ap.add_argument("--risk-aversion", type=float, default=1.0, help="gamma (default 1.0, the config default)")
    ap.add_argument("--tc-rate", type=float, default=0.0005, help="c, cost per unit turnover (default 5 bp)")
    ap.add_argument("--max-weight", type=float, default=0.1, help="long_only upper bound (default 0.1)")
    ap.add_argument("--leverage", type=float, default=1.5, help="long_short gross limit (default 1.5)")
    ap.add_argument("--idio-scale", type=float, default=1.0,
                    help="multiply the idiosyncratic variances (default 1: comparable to the factor"
                         " variances). 0.01 makes the torch backend use its interior-point stage")
    ap.add_argument("--constraints", nargs="+", default=["long_only", "long_short"], choices=["long_only", "long_short"])
    ap.add_argument("--backends", nargs="+", default=BACKENDS, choices=BACKENDS)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads (default: torch's choice). 1 is robust on a busy machine:"
                         " two threads stall each other when another process holds a core")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=str, default=None, help="write the rows and the settings to this JSON file")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore", category=DeprecationWarning)  # cvxpylayers' numpy 2 notice
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for constraint in args.constraints:
        rows += bench_constraint(args, constraint)
    print_table(rows)
    if args.json:
        meta = {k: v for k, v in vars(args).items() if k != "json"}
        meta.update(torch=torch.__version__, torch_threads=torch.get_num_threads(), numpy=np.__version__,
                    load_average=os.getloadavg(), cpus=os.cpu_count(), platform=platform.platform())
        with open(args.json, "w") as fh:
            json.dump({"settings": meta, "rows": rows}, fh, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
