"""The torch backend refuses data that would leave the weights to rounding, naming the cause.

Each case was found by an independent check: a raw torch LinAlgError for finite extreme inputs,
long_only weights off by 2e-2 for an absurd mu (where long_short refused), and a tiny cov_diag
refused as "an infeasible problem".  Where the data are accepted, the weights match cvxpy +
Clarabel solved directly.
"""

from __future__ import annotations

import pytest
import torch

from core.config import PortfolioConfig
from core.errors import SolverError
from portfolio.cvx import solve_reference
from portfolio.layer import PortfolioLayer
from portfolio.problem import MIN_CURVATURE, cholesky_checked

CONSTRAINTS = {"long_only": dict(constraint="long_only", max_weight=0.3), "long_short": dict(constraint="long_short")}


def problem(batch=2, n=10, k=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    mu = 0.004 * torch.randn(batch, n, generator=g, dtype=torch.float64)
    factor = 0.05 * torch.randn(batch, n, k, generator=g, dtype=torch.float64)
    diag = 1e-3 + 4e-3 * torch.rand(batch, n, generator=g, dtype=torch.float64)
    return mu, factor, diag, torch.full((batch, n), 1.0 / n, dtype=torch.float64)


def torch_layer(name, n=10, k=2):
    return PortfolioLayer(n, k, PortfolioConfig(solver="torch", **CONSTRAINTS[name]))


@pytest.mark.parametrize("name", list(CONSTRAINTS))
def test_extreme_finite_covariance_is_a_solver_error_naming_the_cause(name):
    mu, factor, diag, prev = problem()
    diag[1, 4] = 1e-200
    with pytest.raises(SolverError, match=r"batch element 1 .*ill-conditioned .*cov_diag\[4\] = 1.000e-200"):
        torch_layer(name)(mu, factor, diag, prev)
    mu, factor, diag, prev = problem()
    factor[0, 2, 1] = 1e200
    with pytest.raises(SolverError, match=r"batch element 0 .*overflows float64 .*cov_factor\| entry 1.000e\+200.*Rescale"):
        torch_layer(name)(mu, factor, diag, prev)


def test_a_failed_cholesky_is_a_solver_error_naming_the_element_and_the_fix():
    """The factorisations of the interior point and the active-set solve (forward and backward)."""
    good = torch.eye(3, dtype=torch.float64)
    bad = torch.tensor([[1.0, 2.0, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    assert torch.equal(cholesky_checked(good.expand(2, 3, 3), "M"), good.expand(2, 3, 3))
    with pytest.raises(SolverError, match=r"batch element 5: the test matrix is not positive definite .*Rescale"):
        cholesky_checked(torch.stack([good, bad]), "the test matrix", offset=torch.tensor([4, 5]))


@pytest.mark.parametrize("name", list(CONSTRAINTS))
def test_absurd_mu_is_refused_by_long_only_as_by_long_short(name):
    mu, factor, diag, prev = problem()
    mu[0, 3] = 1e20
    with pytest.raises(SolverError, match=r"batch element 0 .*risk term is negligible.* = 1.000e\+20"):
        torch_layer(name)(mu, factor, diag, prev)


@pytest.mark.parametrize("name", list(CONSTRAINTS))
def test_large_mu_that_is_accepted_is_solved_to_the_reference(name):
    """A mu 10x the variances' scale (MIN_CURVATURE leaves room to ~1e4 of it) is still solved
    exactly: the weights match cvxpy + Clarabel directly."""
    mu, factor, diag, prev = problem()
    mu[:, 3] = 10.0
    layer = torch_layer(name)
    var = 2 * (diag + factor.square().sum(2)).amax(1)
    assert bool((var / 10.0 > MIN_CURVATURE).all()), "the case should be accepted"
    w = layer(mu, factor, diag, prev)
    assert float((w - torch.from_numpy(solve_reference(mu, factor, diag, prev, layer.cfg))).abs().max()) <= 1e-5


@pytest.mark.parametrize("name", list(CONSTRAINTS))
def test_tiny_cov_diag_is_refused_as_ill_conditioned_not_as_infeasible(name):
    mu, factor, diag, prev = problem()
    diag = torch.full_like(diag, 1e-30)
    with pytest.raises(SolverError) as info:
        torch_layer(name)(mu, factor, diag, prev)
    message = str(info.value)
    assert "ill-conditioned" in message and "1.000e-30" in message and "min_variance" in message
    assert "infeasible" not in message


def test_small_cov_diag_that_is_accepted_is_solved_to_the_reference():
    """cov_diag 1e-8 of its former size (scaled >= 5e-10, a few times MIN_IDIOSYNCRATIC)."""
    mu, factor, diag, prev = problem()
    layer = torch_layer("long_only")
    w = layer(mu, factor, diag * 1e-8, prev)
    ref = torch.from_numpy(solve_reference(mu, factor, diag * 1e-8, prev, layer.cfg))
    assert float((w - ref).abs().max()) <= 1e-6
