"""The portfolio problem and its solvers, for the model (a differentiable layer) and the data
package's oracle and probe policies alike.

Per batch element::

    maximise   mu^T w - gamma * w^T Sigma w - c * ||w - w_prev||_1,   Sigma = B B^T + diag(d)
    subject to 1^T w = 1 and  long_only: 0 <= w [<= max_weight]  |  long_short: ||w||_1 <= leverage

Layers: this package sits above ``core`` (config, errors) and below ``model`` and ``data``, which
both build their problems here and stay independent of each other.  It imports no Ray.

Modules
-------
- :mod:`portfolio.layer`: ``PortfolioLayer``, the differentiable layer (public entry point);
- :mod:`portfolio.constraints`: the constraints, once: cvxpy set, feasibility rule, bound rule,
  solution check, one-line description;
- :mod:`portfolio.cvx`: the cvxpylayers backend, ``build_problem`` (the DPP problem) and the
  direct cvxpy + Clarabel solves ``solve_reference`` / ``solve_full_cov``;
- :mod:`portfolio.torch_solver`: the torch backend's batched solve and implicit-KKT backward,
  with its stages: :mod:`portfolio.problem` (settings, scaling, conditioning checks),
  :mod:`portfolio.dual` + :mod:`portfolio.newton` (dual Newton), :mod:`portfolio.ipm` +
  :mod:`portfolio.ipm_layout` (interior point), :mod:`portfolio.kkt` + :mod:`portfolio.active_set`
  (active-set polish, KKT certificate, the linear solve of the backward).

See docs/portfolio.md.
"""
