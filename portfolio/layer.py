"""Differentiable mean-variance portfolio layer with transaction costs.

Per batch element the layer returns the exact maximiser of::

    mu^T w - gamma * w^T Sigma w - c * ||w - w_prev||_1,   Sigma = B B^T + diag(d)
    subject to 1^T w = 1 and  long_only: 0 <= w [<= max_weight]  |  long_short: ||w||_1 <= leverage

(gamma = portfolio.risk_aversion, c = portfolio.tc_rate) and is differentiable w.r.t. mu, B, d
(and w_prev).  Two backends, chosen by ``portfolio.solver``:

- ``cvxpylayers``: the reference; diffcp with ECOS / Clarabel / SCS on the CPU.
- ``torch``: an exact batched solve in float64 torch on the inputs' device (dual Newton, and
  an interior point + active-set polish where that is ill-conditioned) with an implicit-KKT
  backward (:mod:`portfolio.torch_solver`); 13-39x faster than cvxpylayers/ECOS (docs/portfolio.md).

Every solution of either backend is checked (finite, not all zero, budget, bounds, leverage);
a failed or infeasible solve raises :class:`SolverError` naming the batch element.  Nothing is
ever replaced by zeros or a fallback.  See docs/portfolio.md.
"""

from __future__ import annotations

import torch

from core.config import PortfolioConfig
from core.errors import ConfigError, ShapeError, SolverError
from portfolio.constraints import check_feasible, check_solution
from portfolio.torch_solver import QPSettings, single_thread, solve_portfolio_qp

__all__ = ["PortfolioLayer"]


class PortfolioLayer(torch.nn.Module):
    """Mean-variance portfolio weights from (mu, factor covariance, previous weights).

    Parameters
    ----------
    n_assets : number of assets n (>= 2)
    cov_rank : rank k of the covariance factor B (>= 1)
    cfg : PortfolioConfig (constraint, max_weight, leverage, risk_aversion, tc_rate, solver,
        solve_method, feasibility_tol)
    """

    def __init__(self, n_assets: int, cov_rank: int, cfg: PortfolioConfig):
        super().__init__()
        if n_assets < 2 or cov_rank < 1:
            raise ConfigError(
                f"PortfolioLayer(n_assets={n_assets}, cov_rank={cov_rank}): needs n_assets >= 2 and"
                " cov_rank >= 1 (data.num_factors, model.heads.cov_rank)."
            )
        if cfg.solver not in ("cvxpylayers", "torch"):
            raise ConfigError(f"portfolio.solver = {cfg.solver!r} is unknown; use 'cvxpylayers' or 'torch'.")
        self.n_assets, self.cov_rank, self.cfg = n_assets, cov_rank, cfg
        self.settings = QPSettings.from_config(cfg)
        self._cvx = None
        if cfg.solver == "cvxpylayers":
            from portfolio.cvx import CvxpyBackend  # cvxpy + diffcp load only for the reference solver

            self._cvx = CvxpyBackend(n_assets, cov_rank, cfg)

    @property
    def backend(self) -> str:
        """Readable backend name, e.g. 'cvxpylayers/ECOS' or 'torch'."""
        return f"cvxpylayers/{self.cfg.solve_method}" if self._cvx is not None else "torch"

    def extra_repr(self) -> str:
        return f"n_assets={self.n_assets}, cov_rank={self.cov_rank}, backend={self.backend}"

    def forward(self, mu, cov_factor, cov_diag, w_prev) -> torch.Tensor:
        """Optimal weights.

        Parameters
        ----------
        mu : (B, n) expected returns;  cov_factor : (B, n, k);  cov_diag : (B, n) > 0;
        w_prev : (B, n) previous weights (transaction costs apply to w - w_prev).

        Returns
        -------
        (B, n) float64 weights on mu's device, differentiable w.r.t. mu, cov_factor, cov_diag
        (and w_prev).  Raises SolverError naming the batch element on a failed solve.
        """
        weights = self.solve_unchecked(mu, cov_factor, cov_diag, w_prev)
        check_solution(weights.detach(), w_prev.detach(), self.cfg, backend=self.backend)
        return weights

    def solve_unchecked(self, mu, cov_factor, cov_diag, w_prev) -> torch.Tensor:
        """forward without the final solution check (inputs are still checked).

        For benchmarks that report how far a loose solver is from feasible; training code must
        call the layer itself.
        """
        st = self.settings
        with single_thread():
            self._check_inputs(mu, cov_factor, cov_diag, w_prev)
            check_feasible(st.long_only, st.max_weight, st.leverage, self.n_assets)
        inputs = [x.to(torch.float64) for x in (mu, cov_factor, cov_diag, w_prev)]
        if self._cvx is not None:
            return self._cvx(*inputs)
        return solve_portfolio_qp(*inputs, st, precheck=False)  # (single_thread: inside the solve)

    def _check_inputs(self, mu, cov_factor, cov_diag, w_prev) -> None:
        n, k = self.n_assets, self.cov_rank
        batch = mu.shape[0] if mu.dim() == 2 else -1
        expected = {"mu": (batch, n), "cov_factor": (batch, n, k), "cov_diag": (batch, n), "w_prev": (batch, n)}
        tensors = {"mu": mu, "cov_factor": cov_factor, "cov_diag": cov_diag, "w_prev": w_prev}
        for name, x in tensors.items():
            if tuple(x.shape) != expected[name] or batch < 1:
                raise ShapeError(
                    f"PortfolioLayer(n_assets={n}, cov_rank={k}): {name} has shape {tuple(x.shape)},"
                    f" expected (B, {', '.join(map(str, expected[name][1:]))}) with the batch size B of mu"
                    " (B >= 1; add a batch dim with unsqueeze(0)). n_assets / cov_rank come from"
                    " data.num_factors / model.heads.cov_rank."
                )
            if x.device != mu.device:
                raise ConfigError(f"PortfolioLayer: {name} is on {x.device} but mu is on {mu.device}; move both.")
        # one sum is NaN or inf if any entry is (a finite sum can only overflow: then look closer)
        if not bool(torch.isfinite(sum(x.detach().sum() for x in tensors.values()))):
            for name, x in tensors.items():
                bad = ~torch.isfinite(x.detach()).flatten(1).all(1)
                if bool(bad.any()):
                    i = int(bad.nonzero()[0, 0])
                    raise SolverError(
                        f"portfolio layer ({self.backend}): batch element {i} (of {int(bad.sum())} bad): {name}"
                        " contains NaN or inf; the upstream model produced non-finite values (check the"
                        " learning rate / loss for divergence)."
                    )
        if not bool(cov_diag.detach().amin() > 0):
            low = cov_diag.detach().amin(1)
            i = int((low <= 0).nonzero()[0, 0])
            raise SolverError(
                f"portfolio layer ({self.backend}): batch element {i}: cov_diag has a non-positive entry"
                f" ({float(low[i]):.3e}); the idiosyncratic variances must be > 0"
                " (model.heads.min_variance keeps them positive)."
            )
