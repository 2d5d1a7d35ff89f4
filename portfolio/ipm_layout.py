"""The interior point's variables and rows: the constraints of the portfolio QP, per asset.

The variables of one asset are the slots ``x[..., :]`` = (w, [t], [a]) (t >= |w - w_prev| when
tc_rate > 0, a >= |w| for long_short); its inequality rows G x <= h are ordered [bounds...,
plus rows of the |.| pairs..., minus rows...] so that pair p bounds aux slot p + 1.  The budget
and leverage rows couple the assets and are handled by :class:`portfolio.ipm.InteriorPoint`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from portfolio.problem import QPSettings

START = 0.1
"""Initial slacks and multipliers (scaled problem); 0.1 took ~15% fewer iterations than 1."""


class Layout:
    """Slots of the per-asset variables and the per-asset inequality rows G x <= h."""

    def __init__(self, st: QPSettings):
        self.tc, self.ls = st.tc_rate > 0, not st.long_only
        pairs = (["t"] if self.tc else []) + (["a"] if self.ls else [])  # aux slots, |.| pairs
        self.slot = {name: i for i, name in enumerate(["w"] + pairs)}
        bounds = (["lo"] + (["hi"] if st.max_weight is not None else [])) if st.long_only else []
        plus, minus = {"t": "tc+", "a": "ls+"}, {"t": "tc-", "a": "ls-"}
        names = bounds + [plus[p] for p in pairs] + [minus[p] for p in pairs]
        self.row = {name: j for j, name in enumerate(names)}
        self.nb, self.P = len(bounds), len(pairs)
        self.V, self.J = 1 + self.P, len(names)
        coef = {"lo": {"w": -1.0}, "hi": {"w": 1.0}, "tc+": {"w": 1.0, "t": -1.0},
                "tc-": {"w": -1.0, "t": -1.0}, "ls+": {"w": 1.0, "a": -1.0}, "ls-": {"w": -1.0, "a": -1.0}}
        self.G = [[coef[r].get(s, 0.0) for s in self.slot] for r in names]  # (J, V)

    def h(self, w_prev: torch.Tensor, st: QPSettings) -> torch.Tensor:
        """Right-hand sides (B, n, J) of the per-asset rows."""
        zero = torch.zeros_like(w_prev)
        by_row = {"lo": zero, "hi": zero + (st.max_weight or 0.0), "ls+": zero, "ls-": zero,
                  "tc+": w_prev, "tc-": -w_prev}
        return torch.stack([by_row[name] for name in self.row], dim=-1)


@dataclass
class IPMState:
    x: torch.Tensor  # (B, n, V) per-asset variables (w, [t], [a])
    s: torch.Tensor  # (B, n, J) slacks of G x <= h
    z: torch.Tensor  # (B, n, J) their multipliers
    y: torch.Tensor  # (B, 1)    budget multiplier
    sL: torch.Tensor  # (B, 1)   leverage slack (long_short; START otherwise, unused)
    zL: torch.Tensor  # (B, 1)   leverage multiplier
    iterations: int = 0
