"""Each loss term against an independent float64 numpy computation (dense Sigma, slogdet, inv)."""

import math

import numpy as np
import pytest
import torch

from core.config import TrainingConfig
from core.errors import ShapeError
from model.losses import SHARPE_VARIANCE_EPS, compute_losses

B, N, K, HORIZON, TC_RATE = 6, 4, 2, 5, 0.0005
TRAIN = TrainingConfig(
    batch_size=B, max_epochs=1, learning_rate=1e-3, device="cpu",
    alpha_return=0.7, beta_cov=0.3, gamma_sharpe=1.5, lambda_tc=200.0,
)


def inputs(seed: int = 0) -> dict[str, torch.Tensor]:
    """Realistic 5-day scales: returns ~1.4 %, Sigma diag ~2e-4; weights float64 like the solver's."""
    rng = np.random.default_rng(seed)
    weights = rng.dirichlet(np.ones(N), size=B)
    w_prev = rng.dirichlet(np.ones(N), size=B)
    return {
        "mu": torch.tensor(rng.normal(0, 1e-3, (B, N)), dtype=torch.float32),
        "cov_factor": torch.tensor(rng.normal(0, 8e-3, (B, N, K)), dtype=torch.float32),
        "cov_diag": torch.tensor(rng.uniform(5e-5, 2e-4, (B, N)), dtype=torch.float32),
        "weights": torch.tensor(weights, dtype=torch.float64),
        "w_prev": torch.tensor(w_prev, dtype=torch.float64),
        "r_horizon": torch.tensor(rng.normal(1e-3, 1.4e-2, (B, N)), dtype=torch.float32),
        "r_daily": torch.tensor(rng.normal(2e-4, 6e-3, (B, HORIZON, N)), dtype=torch.float32),
    }


def losses(t: dict[str, torch.Tensor], cfg: TrainingConfig = TRAIN, **kw) -> dict[str, torch.Tensor]:
    """compute_losses on the inputs ``t``, any of them replaced by ``kw`` (e.g. ``mu=``)."""
    args = {**t, **kw}
    return compute_losses(
        args["mu"], args["cov_factor"], args["cov_diag"], args["weights"], args["w_prev"],
        args["r_horizon"], args["r_daily"], cfg, TC_RATE, HORIZON, r_target=args.get("r_target"),
    )


def assert_other_terms_are_raw(got: dict[str, torch.Tensor], t: dict[str, torch.Tensor]) -> None:
    """A training.return_loss variant leaves loss_cov, loss_sharpe and loss_tc as the raw config has them."""
    raw = losses(t)
    for key in ("loss_cov", "loss_sharpe", "loss_tc"):
        assert float(got[key]) == float(raw[key])


def reference(t: dict[str, torch.Tensor]) -> dict[str, float]:
    """The definitions of docs/model.md, term by term, in numpy float64 with a dense Sigma."""
    a = {k: v.double().numpy() for k, v in t.items()}
    mu, r, w, w_prev = a["mu"], a["r_horizon"], a["weights"], a["w_prev"]
    loss_return = np.mean((100 * (mu - r)) ** 2)
    nll = []
    for b in range(B):
        sigma = 1e4 * (a["cov_factor"][b] @ a["cov_factor"][b].T + np.diag(a["cov_diag"][b]))  # percent**2
        e = 100 * (r[b] - mu[b])
        sign, logdet = np.linalg.slogdet(sigma)
        assert sign > 0
        nll.append(0.5 * (e @ np.linalg.inv(sigma) @ e + logdet + N * np.log(2 * np.pi)) / N)
    p = (w * r).sum(1)
    sharpe = p.mean() / np.sqrt(p.var(ddof=1) + SHARPE_VARIANCE_EPS) * np.sqrt(252 / HORIZON)
    loss_tc = TC_RATE * np.abs(w - w_prev).sum(1).mean()
    out = {"loss_return": loss_return, "loss_cov": np.mean(nll), "loss_sharpe": -sharpe, "loss_tc": loss_tc}
    out["loss"] = 0.7 * loss_return + 0.3 * out["loss_cov"] + 1.5 * out["loss_sharpe"] + 200.0 * loss_tc
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_each_term_matches_a_hand_computation(seed):
    t = inputs(seed)
    got, want = losses(t), reference(t)
    assert set(got) == {"loss", "loss_return", "loss_cov", "loss_sharpe", "loss_tc"}
    for key, value in want.items():
        assert got[key].dtype == torch.float64 and got[key].shape == ()
        assert got[key].item() == pytest.approx(value, rel=1e-9, abs=1e-12), key


def test_terms_are_order_one_at_realistic_scales():
    got = losses(inputs(2))
    assert 0.1 < got["loss_return"].item() < 20
    assert 0.0 < got["loss_cov"].item() < 5
    assert abs(got["loss_sharpe"].item()) < 50


def test_loss_cov_is_minimised_by_the_true_variance():
    """Sanity of the NLL beyond the formula: for r ~ N(0, s^2), the expected loss is smallest at s."""
    gen = torch.Generator().manual_seed(3)
    r = 0.014 * torch.randn(4000, 2, generator=gen)
    zeros = torch.zeros(4000, 2)
    values = {}
    for scale in (0.5, 1.0, 2.0):
        cov_diag = torch.full((4000, 2), (scale * 0.014) ** 2)
        values[scale] = compute_losses(
            zeros, torch.zeros(4000, 2, 1), cov_diag, torch.full((4000, 2), 0.5, dtype=torch.float64),
            torch.full((4000, 2), 0.5, dtype=torch.float64), r, None, TRAIN, TC_RATE, HORIZON,
        )["loss_cov"].item()
    assert values[1.0] < values[0.5] and values[1.0] < values[2.0]
    assert values[1.0] == pytest.approx(0.5 * (1 + math.log(1.4**2) + math.log(2 * math.pi)), abs=0.05)


def test_sharpe_needs_two_samples():
    t = {k: v[:1] for k, v in inputs().items()}
    with pytest.raises(ShapeError, match="needs >= 2 samples, got a batch of 1") as info:
        losses(t)
    assert isinstance(info.value, ValueError)


def test_shape_mismatch_names_expected_and_actual():
    t = inputs()
    with pytest.raises(ShapeError, match=r"cov_factor: expected shape \(6, 4, \*\), got \(6, 3, 2\)"):
        losses(t, cov_factor=t["cov_factor"][:, :3])
    with pytest.raises(ShapeError, match=r"r_daily: expected shape \(6, 5, 4\), got \(6, 4, 4\)"):
        losses(t, r_daily=t["r_daily"][:, :4])


def test_gradients_reach_every_prediction():
    t = {k: v.clone().requires_grad_(k in ("mu", "cov_factor", "cov_diag", "weights")) for k, v in inputs().items()}
    losses(t)["loss"].backward()
    for key in ("mu", "cov_factor", "cov_diag", "weights"):
        assert torch.isfinite(t[key].grad).all() and t[key].grad.abs().max() > 0, key


def test_scales_multiply_each_term_inside_the_total_only():
    t = inputs(4)
    raw = losses(t)
    scales = {"loss_return": 2.0, "loss_cov": 0.25, "loss_sharpe": 0.01, "loss_tc": 3.0}
    scaled = compute_losses(
        t["mu"], t["cov_factor"], t["cov_diag"], t["weights"], t["w_prev"], t["r_horizon"], t["r_daily"],
        TRAIN, TC_RATE, HORIZON, scales,
    )
    for key in ("loss_return", "loss_cov", "loss_sharpe", "loss_tc"):
        assert float(scaled[key]) == float(raw[key])  # the logged terms stay unscaled
    expected = (TRAIN.alpha_return * 2.0 * float(raw["loss_return"]) + TRAIN.beta_cov * 0.25 * float(raw["loss_cov"])
                + TRAIN.gamma_sharpe * 0.01 * float(raw["loss_sharpe"]) + TRAIN.lambda_tc * 3.0 * float(raw["loss_tc"]))
    assert float(scaled["loss"]) == pytest.approx(expected, rel=1e-12)


def test_huber_return_loss_caps_the_pull_of_large_errors():
    # training.return_loss = huber: the squared percent error below HUBER_DELTA, its tangent line
    # beyond (numpy reference); equal to the MSE when every error is small; each element's
    # gradient is at most 2 * delta / (B N) in percent; the other terms are the raw config's.
    import dataclasses

    from model.losses import HUBER_DELTA, return_mse

    t = inputs(3)
    hub = dataclasses.replace(TRAIN, return_loss="huber")
    mu = t["mu"].double().clone().requires_grad_(True)
    got = losses(t, hub, mu=mu)
    e = np.abs(100 * (t["mu"].double().numpy() - t["r_horizon"].double().numpy()))
    assert (e > HUBER_DELTA).any() and (e <= HUBER_DELTA).any()  # both regions are exercised
    ref = np.where(e <= HUBER_DELTA, e**2, 2 * HUBER_DELTA * e - HUBER_DELTA**2).mean()
    assert float(got["loss_return"]) == pytest.approx(ref, rel=1e-12)
    (grad,) = torch.autograd.grad(got["loss_return"], mu)
    assert float(grad.abs().max()) * e.size <= 2 * HUBER_DELTA * 100 * (1 + 1e-12)
    assert_other_terms_are_raw(got, t)
    near = t["r_horizon"].double() + 1e-4 * torch.tanh(t["mu"].double())  # every error below 0.01 %
    assert float(return_mse(near, t["r_horizon"].double(), "huber")) == pytest.approx(
        float(return_mse(near, t["r_horizon"].double(), "raw")), rel=1e-12)


def test_cross_section_return_loss_leaves_out_each_dates_common_move():
    # training.return_loss = cross_section: the MSE of the demeaned mu against the demeaned
    # returns (pandas reference), blind to a shift common to all factors on a date, which moves the
    # raw MSE; the other terms are those of the raw config.
    import dataclasses

    import pandas as pd

    t = inputs(3)
    xs = dataclasses.replace(TRAIN, return_loss="cross_section")
    got = losses(t, xs)
    mu = pd.DataFrame(t["mu"].double().numpy())
    r = pd.DataFrame(t["r_horizon"].double().numpy())
    demeaned = (mu.sub(mu.mean(axis=1), axis=0) - r.sub(r.mean(axis=1), axis=0)) * 100
    assert float(got["loss_return"]) == pytest.approx(float((demeaned**2).to_numpy().mean()), rel=1e-12)
    assert_other_terms_are_raw(got, t)
    shift = torch.tensor(np.random.default_rng(4).normal(0, 1e-2, (B, 1)), dtype=torch.float64)
    shifted = losses(t, xs, mu=t["mu"].double() + shift)
    assert float(shifted["loss_return"]) == pytest.approx(float(got["loss_return"]), rel=1e-12)
    assert float(losses(t, mu=t["mu"].double() + shift)["loss_return"]) > 1.1 * float(losses(t)["loss_return"])


def test_a_detached_cov_loss_mean_trains_sigma_only():
    # training.cov_loss_mean = detached: loss_cov has the same value and the same gradient on the
    # covariance, and none on mu (with the model's mu the Mahalanobis term pulls mu towards r).
    import dataclasses

    t = inputs(5)
    detached = dataclasses.replace(TRAIN, cov_loss_mean="detached")
    with_mu = dataclasses.replace(TRAIN, cov_loss_mean="mu")
    grads = {}
    for name, cfg in (("mu", with_mu), ("detached", detached)):
        mu, factor, diag = (t[k].double().clone().requires_grad_(True) for k in ("mu", "cov_factor", "cov_diag"))
        out = compute_losses(mu, factor, diag, t["weights"], t["w_prev"], t["r_horizon"], t["r_daily"], cfg,
                             TC_RATE, HORIZON)
        out["loss_cov"].backward()
        grads[name] = (float(out["loss_cov"].detach()), mu.grad, factor.grad, diag.grad)
    (v_mu, g_mu, f_mu, d_mu), (v_det, g_det, f_det, d_det) = grads["mu"], grads["detached"]
    assert v_det == v_mu
    assert g_mu.abs().max() > 1e-6 and g_det is None
    torch.testing.assert_close(f_det, f_mu, rtol=1e-12, atol=0)
    torch.testing.assert_close(d_det, d_mu, rtol=1e-12, atol=0)


def test_rank_ic_return_loss_is_one_minus_the_mean_rank_correlation():
    # training.return_loss = rank_ic: 1 - mean over dates of the Pearson correlation of mu with the
    # ranks of the realised returns (pandas + scipy reference); blind to a positive scale and a
    # shift of each date's mu; 0 when mu is an increasing affine map of those ranks, 2 when a
    # decreasing one; the gradient reaches mu; the other terms are those of the raw config.
    import dataclasses

    import pandas as pd
    from scipy.stats import rankdata

    t = inputs(5)
    ric = dataclasses.replace(TRAIN, return_loss="rank_ic")
    mu = t["mu"].double().clone().requires_grad_(True)
    got = losses(t, ric, mu=mu)
    m = pd.DataFrame(t["mu"].double().numpy())
    ranks = pd.DataFrame(rankdata(t["r_horizon"].double().numpy(), axis=1))
    ref = 1.0 - m.corrwith(ranks, axis=1).mean()
    assert float(got["loss_return"]) == pytest.approx(ref, rel=1e-10)
    (grad,) = torch.autograd.grad(got["loss_return"], mu)
    assert float(grad.abs().max()) > 0
    assert_other_terms_are_raw(got, t)
    rng = np.random.default_rng(6)
    scale = torch.tensor(rng.uniform(0.1, 10, (B, 1)))
    shift = torch.tensor(rng.normal(0, 1e-2, (B, 1)))
    moved = losses(t, ric, mu=t["mu"].double() * scale + shift)
    assert float(moved["loss_return"]) == pytest.approx(float(got["loss_return"]), rel=1e-10)
    perfect = torch.tensor(ranks.to_numpy()) * 1e-3 - 3e-3  # RANK_IC_EPS moves it by ~1e-11
    assert float(losses(t, ric, mu=perfect)["loss_return"]) == pytest.approx(0.0, abs=1e-9)
    assert float(losses(t, ric, mu=-perfect)["loss_return"]) == pytest.approx(2.0, abs=1e-9)


def test_a_training_target_replaces_the_horizon_return_in_the_return_and_sharpe_terms_only():
    """training.target_days: loss_return and loss_sharpe score r_target (the numpy reference fed
    r_target as the realised return); loss_cov keeps the horizon return; loss_tc ignores both."""
    t = inputs(3)
    target = t["r_horizon"] * 0.5 + 0.002 * torch.randn(t["r_horizon"].shape, generator=torch.Generator().manual_seed(9),
                                                        dtype=t["r_horizon"].dtype)
    got = losses(t, r_target=target)
    as_target = reference({**t, "r_horizon": target})
    raw = reference(t)
    for key, ref in (("loss_return", as_target), ("loss_sharpe", as_target), ("loss_cov", raw), ("loss_tc", raw)):
        assert float(got[key]) == pytest.approx(ref[key], rel=1e-10), key
    assert float(got["loss_return"]) != pytest.approx(raw["loss_return"], rel=1e-3)
    assert float(got["loss_sharpe"]) != pytest.approx(raw["loss_sharpe"], rel=1e-3)
    same = losses(t, r_target=t["r_horizon"].clone())
    assert all(float(same[k]) == float(losses(t)[k]) for k in same)
    with pytest.raises(ShapeError, match="r_target"):
        losses(t, r_target=target[:, :-1])


def test_rank_ic_anchor_adds_the_raw_mse_at_its_weight():
    # training.rank_ic_anchor = a: loss_return = (1 - mean rank correlation) + a * the raw MSE,
    # each against its own reference (pandas + scipy; numpy's MSE in percent**2), so the sum is no
    # longer blind to mu's scale: doubling mu moves it by a * (MSE(2 mu) - MSE(mu)) exactly.
    import dataclasses

    import pandas as pd
    from scipy.stats import rankdata

    t = inputs(7)
    a = 0.3
    anchored = dataclasses.replace(TRAIN, return_loss="rank_ic", rank_ic_anchor=a)
    mu, r = t["mu"].double().numpy(), t["r_horizon"].double().numpy()
    ranks = pd.DataFrame(rankdata(r, axis=1))

    def ref(m: np.ndarray) -> float:
        return 1.0 - pd.DataFrame(m).corrwith(ranks, axis=1).mean() + a * np.mean((100 * (m - r)) ** 2)

    got = losses(t, anchored)
    assert float(got["loss_return"]) == pytest.approx(ref(mu), rel=1e-10)
    doubled = losses(t, anchored, mu=2 * t["mu"].double())
    assert float(doubled["loss_return"]) == pytest.approx(ref(2 * mu), rel=1e-10)
    assert float(doubled["loss_return"]) != pytest.approx(float(got["loss_return"]), rel=1e-6)
    assert_other_terms_are_raw(got, t)
    plain = losses(t, dataclasses.replace(TRAIN, return_loss="rank_ic"))
    mse = losses(t)["loss_return"]
    assert float(got["loss_return"]) == pytest.approx(float(plain["loss_return"]) + a * float(mse), rel=1e-12)
