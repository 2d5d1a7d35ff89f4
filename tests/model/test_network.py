"""Heads (PSD covariance, units) and the end-to-end model (shapes, float64 solve, gradients)."""

from pathlib import Path

import pytest
import torch

from core.config import load_config
from core.errors import ConfigError, ShapeError
from model.heads import MomentHeads, horizon_vol
from model.losses import compute_losses
from model.network import ModelOutput, XLSTMPortfolio
from references import dense_covariance

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
N_FACTORS, N_FEATURES, LOOKBACK, RANK = 5, 9, 20, 2


def small_config(*overrides: str):
    base = [
        f"data.lookback_days={LOOKBACK}", f"data.num_factors={N_FACTORS}", "portfolio.max_weight=0.5",
        "portfolio.solver=torch", "model.encoder.hidden_dim=32", f"model.heads.cov_rank={RANK}",
    ]
    return load_config(CONFIGS / "model_config_cpu_smoke.yaml", base + list(overrides))


def windows(batch: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, LOOKBACK, N_FACTORS, N_FEATURES, generator=torch.Generator().manual_seed(seed))


def batch_losses(model, cfg) -> dict:
    """The loss terms of one forward pass on 8 fixed windows with 1.4 %-vol returns, from 1/N."""
    x = windows(batch=8, seed=4)
    r_horizon = 0.014 * torch.randn(8, N_FACTORS, generator=torch.Generator().manual_seed(5))
    out = model(x)
    w_prev = torch.full((8, N_FACTORS), 1 / N_FACTORS, dtype=torch.float64)
    return compute_losses(
        out.mu, out.cov_factor, out.cov_diag, out.weights, w_prev, r_horizon, None, cfg.training, 0.0, 5
    )


@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_heads_covariance_is_positive_definite(scale):
    torch.manual_seed(0)
    heads = MomentHeads(hidden_dim=32, n_assets=N_FACTORS, cov_rank=RANK, min_variance=1e-6, horizon=5)
    h = scale * torch.randn(64, 32)  # scale 30 drives softplus towards 0: the floor must hold
    mu, cov_factor, cov_diag = heads(h)
    assert (mu.shape, cov_factor.shape, cov_diag.shape) == ((64, 5), (64, 5, RANK), (64, 5))
    assert (cov_diag >= 1e-6).all()
    eigenvalues = torch.linalg.eigvalsh(dense_covariance(cov_factor.double(), cov_diag.double()))  # (B, N)
    assert eigenvalues.min() > 0.99e-6


def test_heads_scales_fit_five_day_factor_returns():
    torch.manual_seed(1)
    heads = MomentHeads(hidden_dim=64, n_assets=50, cov_rank=4, min_variance=1e-6, horizon=5)
    mu, cov_factor, cov_diag = heads(torch.randn(256, 64))  # a LayerNorm-like summary
    var_5d = horizon_vol(5) ** 2  # (10 % * sqrt(5/252))**2 ~ 2e-4
    diag = torch.diagonal(dense_covariance(cov_factor, cov_diag), dim1=-2, dim2=-1)
    assert 0.3 * var_5d < diag.mean() < 3 * var_5d
    assert 2e-4 < mu.std() < 5e-3


def test_heads_stay_float32_under_bf16_autocast():
    heads = MomentHeads(hidden_dim=32, n_assets=N_FACTORS, cov_rank=RANK, min_variance=1e-6, horizon=5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = heads(torch.randn(3, 32).bfloat16())
    assert all(t.dtype == torch.float32 for t in outputs)


def test_heads_refuse_bad_settings_and_summaries():
    # Settings are config values (ConfigError, naming the key); a wrong summary is a shape (ShapeError).
    with pytest.raises(ConfigError, match=r"model\.heads\.min_variance = 0\.0 must be > 0"):
        MomentHeads(hidden_dim=32, n_assets=N_FACTORS, cov_rank=RANK, min_variance=0.0, horizon=5)
    with pytest.raises(ConfigError, match=r"data\.prediction_horizon = 0 must be >= 1 day"):
        MomentHeads(hidden_dim=32, n_assets=N_FACTORS, cov_rank=RANK, min_variance=1e-6, horizon=0)
    heads = MomentHeads(hidden_dim=32, n_assets=N_FACTORS, cov_rank=RANK, min_variance=1e-6, horizon=5)
    with pytest.raises(ShapeError, match=r"encoder summary h: expected shape \(B, 32\), got \(4, 16\)"):
        heads(torch.randn(4, 16))


def test_forward_shapes_dtypes_and_budget():
    torch.manual_seed(2)
    model = XLSTMPortfolio.from_config(small_config()).eval()
    x = windows()
    out = model(x)
    assert isinstance(out, ModelOutput)
    assert (out.mu.shape, out.cov_factor.shape, out.cov_diag.shape) == ((4, 5), (4, 5, RANK), (4, 5))
    assert out.mu.dtype == out.cov_factor.dtype == out.cov_diag.dtype == torch.float32
    assert out.weights.shape == (4, 5) and out.weights.dtype == torch.float64
    torch.testing.assert_close(out.weights.sum(-1), torch.ones(4, dtype=torch.float64), rtol=0, atol=1e-6)
    with torch.no_grad():
        moments = model.predict_moments(x)
        explicit = model(x, torch.full((4, 5), 0.2, dtype=torch.float64))
    for a, b in zip(moments, out[:3]):
        assert torch.equal(a, b)
    torch.testing.assert_close(explicit.weights, out.weights, rtol=0, atol=1e-9)  # None = 1/N


def test_forward_rejects_bad_shapes():
    model = XLSTMPortfolio.from_config(small_config())
    with pytest.raises(ShapeError, match=r"w_prev: expected shape \(4, 5\), got \(4, 4\)"):
        model(windows(), torch.full((4, 4), 0.25, dtype=torch.float64))
    with pytest.raises(ShapeError, match=r"x: expected shape \(B, \*, 5, 9\), got \(4, 20, 5\)"):
        model(windows()[..., 0])


def test_sharpe_gradient_reaches_the_input_projection_through_the_solver():
    # Interior solution (high risk aversion, no cost kink at w_prev): the weights depend smoothly on mu.
    cfg = small_config("portfolio.risk_aversion=50.0", "portfolio.tc_rate=0.0")
    torch.manual_seed(3)
    model = XLSTMPortfolio.from_config(cfg)
    losses = batch_losses(model, cfg)
    model.zero_grad(set_to_none=True)
    losses["loss_sharpe"].backward()
    grad = model.encoder.input_proj.weight.grad
    # loss_sharpe depends on the model only through the weights, so this gradient crossed the solve.
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().max() > 1e-8
    assert model.heads.mu_head.weight.grad.abs().max() > 1e-8


def model_and_batch():
    """A small model in eval mode (no dropout: two passes compute the same moments), 8 windows
    and horizon returns, all seeded."""
    cfg = small_config("portfolio.risk_aversion=50.0", "portfolio.tc_rate=0.0")
    torch.manual_seed(3)
    model = XLSTMPortfolio.from_config(cfg).eval()
    x = windows(batch=8, seed=4)
    r_horizon = 0.014 * torch.randn(8, N_FACTORS, generator=torch.Generator().manual_seed(5))
    return model, x, r_horizon


def parameter_gradients(model, loss: torch.Tensor, retain_graph: bool = False) -> dict:
    """Each named parameter's gradient of ``loss`` alone (None where it does not reach)."""
    model.zero_grad(set_to_none=True)
    loss.backward(retain_graph=retain_graph)
    return {n: p.grad for n, p in model.named_parameters()}


def test_without_the_cov_gradient_the_weights_train_mu_only():
    # training.decision_gradient = mu: same weights; a loss on them reaches the mu head exactly as
    # before and the covariance heads not at all (they then learn from loss_cov alone).
    model, x, r_horizon = model_and_batch()
    grads = {}
    for cov_gradient in (True, False):
        out = model(x, cov_gradient=cov_gradient)
        grads[cov_gradient] = (out.weights.detach(),
                               parameter_gradients(model, (out.weights * r_horizon.double()).sum()))
    (w_end, g_end), (w_mu, g_mu) = grads[True], grads[False]
    assert torch.equal(w_end, w_mu)
    for head in ("factor_head", "variance_head"):
        assert g_end[f"heads.{head}.weight"].abs().max() > 1e-8
        assert g_mu[f"heads.{head}.weight"] is None or not g_mu[f"heads.{head}.weight"].any()
    torch.testing.assert_close(g_mu["heads.mu_head.weight"], g_end["heads.mu_head.weight"], rtol=1e-6, atol=0)
    assert g_mu["heads.mu_head.weight"].abs().max() > 1e-8


def test_without_the_encoder_gradient_the_weights_train_the_heads_only():
    # training.decision_gradient = heads: same moments and weights; a loss on the weights reaches
    # the heads exactly as end to end and the encoder not at all, while a loss on the returned
    # moments still reaches the encoder.
    model, x, r_horizon = model_and_batch()
    runs = {}
    for encoder_gradient in (True, False):
        out = model(x, encoder_gradient=encoder_gradient)
        on_weights = parameter_gradients(model, (out.weights * r_horizon.double()).sum(), retain_graph=True)
        on_mu = parameter_gradients(model, (out.mu * r_horizon).sum())
        runs[encoder_gradient] = (out, on_weights, on_mu)
    (out_end, w_end, mu_end), (out_heads, w_heads, mu_heads) = runs[True], runs[False]
    for a, b in zip(out_end, out_heads):
        assert torch.equal(a.detach(), b.detach())
    encoder = [n for n in w_end if n.startswith("encoder.")]
    heads = [n for n in w_end if n.startswith("heads.")]
    assert encoder and heads
    assert any(w_end[n] is not None and w_end[n].abs().max() > 1e-8 for n in encoder)
    assert all(w_heads[n] is None or not w_heads[n].any() for n in encoder)
    for n in heads:
        if w_end[n] is None:
            assert w_heads[n] is None or not w_heads[n].any()
        else:
            torch.testing.assert_close(w_heads[n], w_end[n], rtol=1e-6, atol=1e-12)
    for n in encoder:
        if mu_end[n] is not None:
            torch.testing.assert_close(mu_heads[n], mu_end[n], rtol=1e-6, atol=1e-12)
    assert any(mu_heads[n] is not None and mu_heads[n].abs().max() > 1e-8 for n in encoder)


def test_feature_skip_starts_at_zero_and_adds_the_pooled_linear_rule():
    # model.heads.feature_skip: built from zeros and last, so the model's parameters and first
    # outputs are those of the model without it; once trained, mu gains vol_h (x_t . w + c) with
    # x_t the features on the decision date (the window's last day) only.
    plain_cfg, skip_cfg = small_config(), small_config("model.heads.feature_skip=true")
    torch.manual_seed(3)
    plain = XLSTMPortfolio.from_config(plain_cfg).eval()
    after_plain = torch.rand(1)
    torch.manual_seed(3)
    skip = XLSTMPortfolio.from_config(skip_cfg).eval()
    assert torch.equal(torch.rand(1), after_plain)  # building the skip drew nothing from the RNG
    assert plain.feature_skip is None and sum(p.numel() for p in skip.feature_skip.parameters()) == N_FEATURES + 1
    plain_state = plain.state_dict()
    assert all(torch.equal(v, skip.state_dict()[k]) for k, v in plain_state.items())
    x = windows(batch=6, seed=7)
    with torch.no_grad():
        for got, want in zip(skip.predict_moments(x), plain.predict_moments(x)):
            assert torch.equal(got, want)
        w = torch.randn(N_FEATURES, generator=torch.Generator().manual_seed(8))
        skip.feature_skip.weight.copy_(w)
        skip.feature_skip.bias.fill_(-0.3)
        mu_skip, cov_f, cov_d = skip.predict_moments(x)
        mu_plain, cov_f0, cov_d0 = plain.predict_moments(x)
    ref = horizon_vol(skip_cfg.data.prediction_horizon) * (x[:, -1].double().numpy() @ w.double().numpy() - 0.3)
    torch.testing.assert_close((mu_skip - mu_plain).double(), torch.from_numpy(ref), rtol=1e-5, atol=5e-8)  # float32 round-off of outputs ~0.04
    assert torch.equal(cov_f, cov_f0) and torch.equal(cov_d, cov_d0)  # the covariance is untouched
    # Only the decision date enters the skip: earlier days change the encoder's part alone.
    x_past = x.clone()
    x_past[:, :-1] += 1.0
    with torch.no_grad():
        delta_past = skip.predict_moments(x_past)[0] - plain.predict_moments(x_past)[0]
    torch.testing.assert_close(delta_past, mu_skip - mu_plain, rtol=1e-5, atol=5e-8)  # float32 round-off of outputs ~0.04


def test_feature_skip_learns_from_the_return_loss_and_round_trips_a_checkpoint(tmp_path):
    cfg = small_config("model.heads.feature_skip=true")
    torch.manual_seed(3)
    model = XLSTMPortfolio.from_config(cfg)
    losses = batch_losses(model, cfg)
    losses["loss_return"].backward()
    assert model.feature_skip.weight.grad.abs().max() > 1e-8 and model.feature_skip.bias.grad.abs() > 0
    path = tmp_path / "skip.pt"
    torch.save(model.state_dict(), path)
    state = torch.load(path, weights_only=True)
    assert {"feature_skip.weight", "feature_skip.bias"} <= set(state)
    with pytest.raises(RuntimeError, match="feature_skip"):  # a plain model refuses the skip's weights
        XLSTMPortfolio.from_config(small_config()).load_state_dict(state)


def test_feature_skip_load_rule_and_the_calibrated_parameters():
    # load_rule sets the path to mu = c + x_t . coef in return units (the probe's ridge, for
    # benchmarks.ablation --skip-init probe); the loss scales are measured on the deep model's
    # parameters only, the same list as the model without the skip.
    cfg = small_config("model.heads.feature_skip=true")
    torch.manual_seed(3)
    model = XLSTMPortfolio.from_config(cfg).eval()
    coef = torch.linspace(-0.02, 0.03, N_FEATURES, dtype=torch.float64)
    model.feature_skip.load_rule(0.001, coef)
    x = windows(batch=6, seed=9)
    with torch.no_grad():
        got = model.feature_skip(x[:, -1]).double()
    ref = 0.001 + x[:, -1].double().numpy() @ coef.numpy()
    torch.testing.assert_close(got, torch.from_numpy(ref), rtol=1e-5, atol=1e-8)
    with pytest.raises(ShapeError, match="feature-skip coefficients"):
        model.feature_skip.load_rule(0.0, torch.zeros(N_FEATURES + 1))
    torch.manual_seed(3)
    plain = XLSTMPortfolio.from_config(small_config())
    calibrated = model.calibrated_parameters()
    assert [p.shape for p in calibrated] == [p.shape for p in plain.calibrated_parameters()]
    skip_ids = {id(p) for p in model.feature_skip.parameters()}
    assert not skip_ids & {id(p) for p in calibrated}
    assert len(calibrated) + 2 == len([p for p in model.parameters() if p.requires_grad])
