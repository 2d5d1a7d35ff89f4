"""Forward+backward time of sLSTM: upstream's vanilla step vs model.slstm_fast, side by side.

Two levels: the sLSTM cell alone (the recurrence that the fast step replaces) and one sLSTM block
as the encoder runs it (cell + gate projections + conv + group norm + feed-forward, which are the
same code in both).  Both modules of a pair hold the same weights (the fast cell is the vanilla cell
with another ``_impl``), see the same input, and the run prints the largest output difference.

    python -m benchmarks.slstm                      # d = 256 and 1024, B = 32, S = 60
    python -m benchmarks.slstm --dims 256 --repeats 5
"""

from __future__ import annotations

import argparse
import copy
import platform
import sys
import time

import torch
from xlstm import FeedForwardConfig, sLSTMBlockConfig, sLSTMLayerConfig, xLSTMBlockStack, xLSTMBlockStackConfig
from xlstm.blocks.slstm.cell import sLSTMCell, sLSTMCellConfig

from model.slstm_fast import use_fast_slstm


def build_pair(level: str, dim: int, heads: int, seq: int, seed: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(upstream vanilla, fast) modules with identical weights: an sLSTM cell or a one-block stack."""
    torch.manual_seed(seed)
    if level == "cell":
        # A random (not zero-initialised) recurrent kernel, so the recurrence does real work.
        cell_cfg = sLSTMCellConfig(
            hidden_size=dim, num_heads=heads, backend="vanilla", recurrent_weight_init="standard"
        )
        upstream = torch.nn.Sequential(_CellOutput(sLSTMCell(cell_cfg)))
        fast = copy.deepcopy(upstream)
        use_fast_slstm(fast)
        return upstream, fast
    cfg = xLSTMBlockStackConfig(
        slstm_block=sLSTMBlockConfig(
            slstm=sLSTMLayerConfig(backend="vanilla", num_heads=heads, conv1d_kernel_size=4),
            feedforward=FeedForwardConfig(proj_factor=1.3, act_fn="gelu"),
        ),
        context_length=seq,
        num_blocks=1,
        embedding_dim=dim,
        slstm_at=[0],
    )
    upstream = xLSTMBlockStack(cfg)
    fast = copy.deepcopy(upstream)
    use_fast_slstm(fast)
    return upstream, fast


class _CellOutput(torch.nn.Module):
    """The cell's output (B, NH, S, DH) only, so both levels share the timing loop."""

    def __init__(self, cell: torch.nn.Module):
        super().__init__()
        self.cell = cell

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cell(x)[0]


def time_fwd_bwd(module: torch.nn.Module, x: torch.Tensor, repeats: int, budget_s: float) -> tuple[float, torch.Tensor]:
    """Best-of-``repeats`` seconds of forward + backward (stops early once ``budget_s`` is spent)."""
    best, spent, out = float("inf"), 0.0, None
    for _ in range(repeats):
        module.zero_grad(set_to_none=True)
        xi = x.detach().requires_grad_(True)
        start = time.perf_counter()
        out = module(xi)  # (B, S, D)
        out.square().mean().backward()
        elapsed = time.perf_counter() - start
        best, spent = min(best, elapsed), spent + elapsed
        if spent > budget_s:
            break
    return best, out.detach()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[256, 1024], help="embedding dims (default 256 1024)")
    parser.add_argument("--batch", type=int, default=32, help="batch size B (default 32)")
    parser.add_argument("--seq", type=int, default=60, help="sequence length S (default 60)")
    parser.add_argument("--heads", type=int, default=4, help="sLSTM heads (default 4)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per module, best kept (default 3)")
    parser.add_argument("--budget", type=float, default=60.0, help="stop repeating after this many seconds (default 60)")
    parser.add_argument("--levels", nargs="+", choices=["cell", "block"], default=["cell", "block"],
                        help="what to time (default: cell block)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's choice; Ray workers get 1 per CPU)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    print(f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"# fwd+bwd seconds (best of {args.repeats}), B={args.batch}, S={args.seq}, heads={args.heads}, float32")
    print(f"{'level':>6} {'d':>6} {'upstream s':>11} {'fast s':>9} {'speedup':>8} {'max |diff|':>11}", flush=True)
    for dim in args.dims:
        for level in args.levels:
            upstream, fast = build_pair(level, dim, args.heads, args.seq, args.seed)
            width = 4 * dim if level == "cell" else dim  # the cell takes the 4 gate pre-activations
            x = torch.randn(args.batch, args.seq, width, generator=torch.Generator().manual_seed(args.seed))
            t_fast, y_fast = time_fwd_bwd(fast, x, args.repeats, args.budget)
            t_up, y_up = time_fwd_bwd(upstream, x, args.repeats, args.budget)
            diff = (y_fast - y_up).abs().max().item()
            row = f"{level:>6} {dim:>6} {t_up:>11.3f} {t_fast:>9.3f} {t_up / t_fast:>7.1f}x {diff:>11.1e}"
            print(row, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
