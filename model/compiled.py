"""torch.compile of the encoder + heads only, as one graph, with bounded and logged recompiles.

What is compiled: :meth:`XLSTMPortfolio.predict_moments` (x (B, L, N, F) -> mu, cov_factor,
cov_diag), the float32/bf16 part of the network.  The portfolio layer stays eager: it solves in
float64 with data-dependent loops (Newton iterations, active sets, ``.item()`` checks), which
dynamo would cut into dozens of graphs.

Fail is fail, so nothing here falls back to eager:

* ``fullgraph=True``: a graph break (an unsupported op, a data-dependent branch) is an error, not
  a silently split graph.  tests/model/test_compile.py pins zero breaks at the smoke, mac_test
  and h100_full shapes.
* ``recompile_limit``: dynamo's default on reaching its recompile limit is to run the function
  eagerly from then on, with a warning.  With ``fullgraph=True`` torch 2.13 raises
  ``FailOnRecompileLimitHit`` instead; :class:`CompiledMoments` turns that (and any other dynamo
  or inductor failure) into :class:`core.errors.CompileError`.
* Every (re)compile is logged at INFO with the input's shape and modes; ``TORCH_LOGS=recompiles``
  adds dynamo's reason (which guard failed).

Expected compiles in a training run: train mode with grad under autocast (the steps), train mode
without autocast (``training.loss_scaling: gradient`` measures its scales once, outside autocast),
eval mode without grad (validation), and one or two more when the batch size changes (training
drops its last partial batch; validation's last batch is smaller): dynamo then makes the batch
dimension dynamic, within a range that mLSTM's conv1d guards (measured: 3 -> 2 -> 5 windows built
3 graphs at 4 factors, 4 -> 3 -> 2 -> 5 built 2 at 104).  :data:`RECOMPILE_LIMIT` bounds it all.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch

from core.errors import CompileError

LOGGER = logging.getLogger(__name__)

RECOMPILE_LIMIT = 8
"""Graphs per compiled function before a run stops (the expected compiles above are 3-5)."""

Moments = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class CompiledMoments:
    """``torch.compile(fn, fullgraph=True, recompile_limit=...)`` whose failures are typed and whose
    compiles are logged.

    Parameters
    ----------
    fn : callable
        x (B, L, N, F) -> (mu (B, N), cov_factor (B, N, k), cov_diag (B, N)); the eager moments.
    recompile_limit : int
        Graphs dynamo may build for ``fn`` before a further one is an error (>= 1).
    backend : str
        torch.compile's backend: "inductor" (training); the CPU tests use "eager" / "aot_eager",
        which trace the same graph (graph breaks and recompiles are dynamo's, whatever the backend)
        without inductor's C++ build (73 s cold for the smoke model's forward on 2 cores).
    """

    def __init__(self, fn: Callable[[torch.Tensor], Moments], recompile_limit: int = RECOMPILE_LIMIT,
                 backend: str = "inductor"):
        if recompile_limit < 1:
            raise ValueError(f"recompile_limit must be >= 1 (got {recompile_limit}).")
        self.recompile_limit = recompile_limit
        self.graphs = 0
        """Graphs built so far (the first compile included)."""
        self._eager = fn
        # Loaded here, not at import: 1.6 s in every Ray worker that never compiles.
        import torch._dynamo
        from torch._dynamo.utils import counters

        self._counters = counters
        self._fn = torch.compile(fn, fullgraph=True, recompile_limit=recompile_limit, backend=backend)

    def __call__(self, x: torch.Tensor) -> Moments:
        before = self._counters["stats"]["unique_graphs"]
        try:
            out = self._fn(x)
        except torch._dynamo.exc.FailOnRecompileLimitHit as exc:
            raise CompileError(
                f"torch.compile of the encoder + heads hit its recompile limit ({self.recompile_limit} graphs) "
                f"at an input of shape {tuple(x.shape)}, dtype {x.dtype}, {self._modes()}: something changes "
                "on every call (a shape, a mode, a Python value). Rerun with TORCH_LOGS=recompiles to see "
                f"which guard fails, or set training.compile=false. ({exc})"
            ) from exc
        except torch._dynamo.exc.TorchDynamoException as exc:
            raise CompileError(
                f"torch.compile of the encoder + heads failed at an input of shape {tuple(x.shape)} "
                f"({self._modes()}): {type(exc).__name__}: {str(exc)[:2000]}. Set training.compile=false "
                "to train eagerly; a graph break is an error here, not a silent split (fullgraph=True)."
            ) from exc
        built = self._counters["stats"]["unique_graphs"] - before
        if built:
            self.graphs += built
            LOGGER.info(
                "compiled the encoder + heads: graph %d of at most %d for input %s %s (%s)%s",
                self.graphs, self.recompile_limit, tuple(x.shape), x.dtype, self._modes(),
                "" if self.graphs == 1 else "; TORCH_LOGS=recompiles says why",
            )
        return out

    def _modes(self) -> str:
        owner = getattr(self._eager, "__self__", None)  # the module of a bound method
        mode = f"{'train' if owner.training else 'eval'} mode, " if isinstance(owner, torch.nn.Module) else ""
        autocast = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else (
            torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        return f"{mode}grad {'on' if torch.is_grad_enabled() else 'off'}, autocast {autocast or 'off'}"
