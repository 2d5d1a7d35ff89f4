"""Model quality that is cheap to pin: the loss scaling's gradient magnitudes, and a short run whose
return head learns the planted signal (rank IC on training dates above zero).

The quality numbers themselves come from ``python -m benchmarks.quality`` (docs/quality.md), not
from tests.
"""

import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from data import prepare
from data.splits import rebalance_indices
from core.config import load_config
from model.losses import compute_losses
from model.network import XLSTMPortfolio
from ray_jobs.steps import equal_weights, gradient_scales, make_optimizer, predict_moments, training_step, validate

SMOKE = Path(__file__).resolve().parents[2] / "configs" / "model_config_cpu_smoke.yaml"
TERMS = ("loss_return", "loss_cov", "loss_sharpe")


@pytest.fixture(scope="module")
def setup():
    cfg = load_config(SMOKE)
    prep = prepare(cfg)
    return cfg, prep, prep.window_source("cpu")


def term_gradient_norms(cfg, model, source, idx, scales=None) -> dict[str, float]:
    """Gradient norm of each (scaled) loss term on the decisions ``idx``, in train mode."""
    x, r_daily, r_horizon = source.gather(torch.as_tensor(idx))
    w_prev = equal_weights(len(idx), cfg.data.num_factors, torch.device("cpu"))
    out = model(x, w_prev)
    terms = compute_losses(out.mu, out.cov_factor, out.cov_diag, out.weights, w_prev, r_horizon, r_daily,
                           cfg.training, cfg.portfolio.tc_rate, cfg.data.prediction_horizon)
    params = [p for p in model.parameters() if p.requires_grad]
    norms = {}
    for i, key in enumerate(TERMS):
        grads = torch.autograd.grad(terms[key], params, retain_graph=i < len(TERMS) - 1, allow_unused=True)
        scale = 1.0 if scales is None else scales[key]
        norms[key] = scale * float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads if g is not None)))
    return norms


def test_gradient_scaling_brings_every_term_to_order_one(setup):
    cfg, prep, source = setup
    torch.manual_seed(0)
    model = XLSTMPortfolio.from_config(cfg)
    scales = gradient_scales(cfg, model, source, prep.splits.train, seed=0)
    # Unscaled, the Sharpe term's gradient dwarfs the return MSE's (it reaches the weights through
    # Sigma^-1); that is what the scaling is for.
    held_out = np.random.default_rng(99).choice(prep.splits.train, cfg.training.batch_size, replace=False)
    raw = term_gradient_norms(cfg, model, source, held_out)
    assert raw["loss_sharpe"] > 30 * raw["loss_return"], raw
    # Scaled, on batches the calibration never saw, every term's gradient is O(1).
    scaled = term_gradient_norms(cfg, model, source, held_out, scales)
    for key, value in scaled.items():
        assert 0.2 < value < 5.0, (key, value, scales)


def test_a_short_run_learns_a_positive_return_ic_on_train(setup):
    cfg, prep, source = setup
    torch.manual_seed(1)
    model = XLSTMPortfolio.from_config(cfg)
    optimizer, _ = make_optimizer(model, cfg)
    scales = gradient_scales(cfg, model, source, prep.splits.train, seed=1)
    rng = np.random.default_rng(1)
    dates = rebalance_indices(prep.splits.train, cfg.data.prediction_horizon)

    def train_ic() -> float:
        mu, _, _ = predict_moments(cfg, model, source, dates)
        r = source.horizon_returns[torch.as_tensor(np.array(dates))].numpy()
        return float(np.mean([spearmanr(m, y).statistic for m, y in zip(mu.numpy(), r)]))

    before = train_ic()
    model.train()
    for step in range(1, 41):
        idx = torch.as_tensor(rng.choice(prep.splits.train, cfg.training.batch_size, replace=False))
        x, r_daily, r_horizon = source.gather(idx)
        training_step(cfg, model, optimizer, x, r_daily, r_horizon, 1, step, Path("unused"), scales)
    after = train_ic()
    print(f"train IC before {before:+.4f}, after {after:+.4f}")
    assert after > 0.01 and after > before, (before, after)


def test_input_noise_trains_on_noisy_windows_and_validates_on_clean_ones(setup):
    cfg, prep, source = setup
    noisy = load_config(SMOKE, ["training.input_noise=0.3"])
    idx = torch.as_tensor(np.random.default_rng(5).choice(prep.splits.train, cfg.training.batch_size, replace=False))
    x, r_daily, r_horizon = source.gather(idx)

    def after_one_step(step_cfg, noise_by_hand: float = 0.0):
        torch.manual_seed(0)
        model = XLSTMPortfolio.from_config(cfg).train()
        optimizer, _ = make_optimizer(model, step_cfg)
        torch.manual_seed(7)  # the noise (if any), then dropout, draw from this stream
        inputs = x + noise_by_hand * torch.randn_like(x) if noise_by_hand else x
        training_step(step_cfg, model, optimizer, inputs, r_daily, r_horizon, 1, 1, Path("unused"))
        return model.state_dict()

    with_noise = after_one_step(noisy)
    by_hand = after_one_step(cfg, noise_by_hand=0.3)  # reference: a clean step on x + 0.3 z
    clean = after_one_step(cfg)
    for name, value in with_noise.items():
        assert torch.equal(value, by_hand[name]), name
    assert any(not torch.equal(value, clean[name]) for name, value in with_noise.items())
    # Validation sees the clean inputs: the noisy config scores a model exactly as the clean one does.
    torch.manual_seed(0)
    model = XLSTMPortfolio.from_config(cfg)
    assert validate(noisy, model, source, prep.splits.val) == validate(cfg, model, source, prep.splits.val)


@pytest.mark.parametrize("warmup", [0, 2])
def test_warmup_ramps_then_the_cosine_runs_over_the_remaining_epochs(warmup):
    cfg = load_config(SMOKE, ["training.max_epochs=6", "training.learning_rate=0.001", f"training.warmup_epochs={warmup}"])
    model = torch.nn.Linear(3, 1)
    optimizer, scheduler = make_optimizer(model, cfg)
    lr, span = 1e-3, 6 - warmup
    expected = [lr * e / (warmup + 1) for e in range(1, warmup + 1)]
    expected += [lr / 10 + (lr - lr / 10) * (1 + math.cos(math.pi * k / span)) / 2 for k in range(span)]
    seen = []
    for epoch in range(6):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
        if epoch == 2:  # a resume mid-run: the schedule's state survives a weights_only checkpoint
            buffer = io.BytesIO()
            torch.save(scheduler.state_dict(), buffer)
            buffer.seek(0)
            state = torch.load(buffer, weights_only=True)
            optimizer_state = optimizer.state_dict()
            optimizer, scheduler = make_optimizer(model, cfg)
            optimizer.load_state_dict(optimizer_state)
            scheduler.load_state_dict(state)
    np.testing.assert_allclose(seen, expected, rtol=1e-12)


def test_warmup_must_leave_an_epoch_at_the_full_rate():
    from core.errors import ConfigError

    with pytest.raises(ConfigError, match="training.warmup_epochs"):
        load_config(SMOKE, ["training.max_epochs=3", "training.warmup_epochs=3"])


def test_the_loss_scales_are_measured_on_the_gradient_training_takes(setup):
    # decision_gradient = mu: the Sharpe term reaches the model through mu only, so its starting
    # gradient is smaller and its scale larger; the return and covariance terms do not go through
    # the solve, so their scales are exactly the same.
    # decision_gradient = heads: the Sharpe term reaches the heads only, so likewise a larger scale.
    cfg, prep, source = setup
    mu_only = load_config(SMOKE, ["training.decision_gradient=mu"])
    heads = load_config(SMOKE, ["training.decision_gradient=heads"])
    scales = {}
    for name, c in (("end_to_end", cfg), ("mu_only", mu_only), ("heads", heads)):
        torch.manual_seed(0)
        model = XLSTMPortfolio.from_config(cfg)
        scales[name] = gradient_scales(c, model, source, prep.splits.train, seed=0)
    assert scales["mu_only"]["loss_sharpe"] > scales["end_to_end"]["loss_sharpe"], scales  # 0.6 % here
    assert scales["heads"]["loss_sharpe"] > scales["end_to_end"]["loss_sharpe"], scales
    for other in ("mu_only", "heads"):
        for key in ("loss_return", "loss_cov"):
            assert scales[other][key] == scales["end_to_end"][key], (other, key, scales)


def test_the_feature_skip_leaves_the_loss_scales_as_they_were(setup):
    # model.heads.feature_skip starts at zero and the calibration measures the deep model's
    # gradients, so the scales are exactly those of the model without it.
    cfg, prep, source = setup
    skip_cfg = load_config(SMOKE, ["model.heads.feature_skip=true"])
    scales, models = {}, {}
    for name, c in (("plain", cfg), ("skip", skip_cfg)):
        torch.manual_seed(0)
        models[name] = XLSTMPortfolio.from_config(c)
        scales[name] = gradient_scales(c, models[name], source, prep.splits.train, seed=0)
    assert scales["skip"] == scales["plain"]
    # Without the exclusion the skip's gradient would rescale the return term (it dominates it).
    full = term_gradient_norms(skip_cfg, models["skip"], source, prep.splits.train[:32])
    models["skip"].feature_skip.requires_grad_(False)
    deep = term_gradient_norms(skip_cfg, models["skip"], source, prep.splits.train[:32])
    assert full["loss_return"] > 1.2 * deep["loss_return"], (full, deep)
