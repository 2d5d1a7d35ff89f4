"""One seed, in process, for ablations: the real model, training step and validation, no Ray.

  python -m benchmarks.ablation --config configs/model_config_cpu_demo.yaml --seed 42 \
      [--set model.encoder.layout=panel --set training.loss_scaling=none ...]

Trains ``training.max_epochs`` epochs of ``training.steps_per_epoch`` steps (shuffled training
windows, as the Ray loop draws them) with ``ray_jobs.steps.training_step`` and prints one JSON line
per epoch: the median gradient norm before clipping, the mean training loss terms and batch
Sharpe, and on the **val split only** the net Sharpe, turnover, loss and the return head's rank
IC, and what the portfolio layer sees and holds (:func:`decision_figures`: mu's scale, the
weights' concentration, mu's fixed tilt, the val Sharpe at other scales of mu; on the synthetic
panel, mu's rank correlation with the planted signal, ``val_s_corr``).  The test split
is never touched: choices are made on val (docs/quality.md).  Single-threaded and Ray-free, so
two ablations run side by side on a 2-core machine (~3 min each for the demo config); the
quality benchmark (``benchmarks.quality``) is the real path.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from core.config import load_config
from core.errors import ConfigError
from core.cli import CliParser, run_cli


def val_moments(cfg, model, source, split: np.ndarray) -> tuple:
    """(the split's rebalance indices (K,), the model's mu (K, N), cov_factor and cov_diag there)."""
    from data.splits import rebalance_indices
    from ray_jobs.steps import predict_moments

    idx = np.array(rebalance_indices(split, cfg.data.prediction_horizon))  # a writable copy for torch
    return (idx, *predict_moments(cfg, model, source, idx))


def val_mu(cfg, model, source, split: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the split's rebalance indices (K,), the model's mu there (K, N))."""
    idx, mu, _, _ = val_moments(cfg, model, source, split)
    return idx, mu.numpy()


def val_ic(source, idx: np.ndarray, mu: np.ndarray) -> float:
    """Mean over the rebalance dates ``idx`` of the rank correlation of mu with the realised returns."""
    from benchmarks.quality import mean_ic

    return mean_ic(mu, source.horizon_returns[torch.as_tensor(idx)].numpy())


MU_MULTIPLIERS = (0.25, 0.5, 2.0)
"""Counterfactual scales of mu handed to the portfolio layer in :func:`decision_figures`."""


@torch.no_grad()
def decision_figures(cfg, model, source, idx: np.ndarray, mu: torch.Tensor, cov_factor: torch.Tensor,
                     cov_diag: torch.Tensor, signal: np.ndarray | None = None) -> dict:
    """What the portfolio layer sees on the val rebalances ``idx`` (the model's moments there, from
    :func:`val_moments`) and what it holds.

    The mean cross-sectional std of mu, the mean predicted volatility sqrt(diag Sigma), their
    ratio (the solver's signal-to-noise), the weights' effective number 1 / sum w^2 and share at
    the cap; the share of mu's cross-sectional variance that is a fixed tilt over the split (each
    factor's mean mu over the dates) and the IC of that tilt and of the rest; and the val Sharpe
    the same moments would give with mu multiplied by each of ``MU_MULTIPLIERS`` (training is
    unchanged: these are counterfactuals of the decision, not of the model).  With ``signal``
    (T, N), the synthetic panel's planted s: mu's rank correlation with it (``benchmarks.ic_parts.recovery``),
    a measure of the ranking without the val returns' noise."""
    from benchmarks.ic_parts import ic_parts, recovery
    from data.scoring import score_weights
    from ray_jobs.steps import chain_solves

    h, tc = cfg.data.prediction_horizon, cfg.portfolio.tc_rate
    sd = torch.sqrt((cov_factor ** 2).sum(-1) + cov_diag)  # (K, N)
    weights, _ = chain_solves(model.portfolio, mu, cov_factor, cov_diag, tc)
    cap = cfg.portfolio.max_weight
    tilt = mu.mean(dim=0, keepdim=True)  # (1, N): each factor's mean mu over the split
    out = {"val_mu_xs_std": float(mu.std(dim=1).mean()), "val_sd_pred": float(sd.mean()),
           "val_mu_over_sd": float((mu / sd).std(dim=1).mean()),
           "val_eff_n": float((1.0 / (weights ** 2).sum(1)).mean()),
           "val_at_cap": float((weights >= cap - 1e-6).double().mean()) if cap else 0.0,
           "val_tilt_share": float(tilt.var(dim=1).squeeze() / mu.var(dim=1).mean())}
    r_horizon = source.horizon_returns[torch.as_tensor(idx)].numpy()
    parts = ic_parts(mu.numpy(), r_horizon)
    out.update(val_ic_tilt=parts["tilt"], val_ic_moving=parts["moving"])
    if signal is not None:  # the synthetic panel's planted s at the same dates: no return noise
        rec = recovery(mu.numpy(), signal[idx])
        out.update(val_s_corr=rec["all"], val_s_corr_moving=rec["moving"])
    for c in MU_MULTIPLIERS:
        w, w_prev = chain_solves(model.portfolio, c * mu, cov_factor, cov_diag, tc)
        res = score_weights(idx, w.numpy(), w_prev.numpy(), r_horizon, tc, h)
        out[f"val_sharpe_mu_x{c}"] = res.sharpe
        out[f"val_turnover_mu_x{c}"] = res.mean_turnover
    return out


@torch.no_grad()
def skip_parts(model, source, idx: np.ndarray, mu: np.ndarray) -> dict:
    """With ``model.heads.feature_skip``: its weights, and the val IC of mu's two parts, the
    skip's linear rule and the deep model's remainder (mu = deep + skip)."""
    x, _, _ = source.gather(torch.as_tensor(idx))
    skip = model.feature_skip(x[:, -1]).numpy()
    return {"skip_weight": [round(float(v), 4) for v in model.feature_skip.weight],
            "val_ic_skip": val_ic(source, idx, skip), "val_ic_deep": val_ic(source, idx, mu - skip)}


def run(args) -> list[dict]:
    from data import prepare
    from data.splits import block_dates, block_starts
    from model.network import XLSTMPortfolio
    from ray_jobs.seed_loop import seed_everything
    from ray_jobs.steps import gradient_scales, make_optimizer, training_step, validate

    torch.set_num_threads(1)
    cfg = load_config(args.config, [*args.overrides, "training.device=cpu"])
    tr = cfg.training
    prep = prepare(cfg)
    source = prep.window_source("cpu", tr.target_days)
    signal = None
    if cfg.data.panel_path is None:  # the synthetic panel: its planted signal, for val_s_corr
        from benchmarks.ic_parts import synthetic_truth

        signal = synthetic_truth(cfg, prep.panel.dates).signal
    seed_everything(args.seed)
    model = XLSTMPortfolio.from_config(cfg, "cpu")
    if args.skip_init == "probe":
        if model.feature_skip is None:
            raise ConfigError("--skip-init probe needs model.heads.feature_skip=true.")
        from data.oracle import probe_coefficients
        from data.windows import horizon_returns

        beta = probe_coefficients(prep, horizon_returns(prep.panel.returns, cfg.data.prediction_horizon))
        model.feature_skip.load_rule(beta[0], beta[1:])
    optimizer, scheduler = make_optimizer(model, cfg)
    train = prep.splits.train
    scales = gradient_scales(cfg, model, source, train, seed=args.seed) if tr.loss_scaling == "gradient" else None
    steps = tr.steps_per_epoch or len(train) // tr.batch_size
    # Weight averages evaluated beside the trained weights: they change nothing in training, so
    # one run compares the raw and the averaged model on the same trajectory.
    averages = {d: torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(d), use_buffers=True)
        for d in args.ema}
    rng, rows = np.random.default_rng(args.seed), []
    batch_dates = args.batch_dates or tr.batch_dates  # the flag is another way to ask for training.batch_dates
    if batch_dates != tr.batch_dates and tr.batch_dates != "random":
        raise ConfigError(f"--batch-dates {args.batch_dates} contradicts training.batch_dates = {tr.batch_dates}; "
                          "give one of them.")
    if batch_dates == "blocks":
        starts = block_starts(train, tr.batch_size, cfg.data.prediction_horizon)
    for epoch in range(1, tr.max_epochs + 1):
        torch.manual_seed(args.seed * 100_003 + epoch)
        model.train()
        order, start, norms, terms = rng.permutation(train), time.perf_counter(), [], []
        for step in range(steps):
            if batch_dates == "blocks":  # B rebalance dates h days apart from a random start
                first = int(starts[rng.integers(0, len(starts))])
                idx = torch.as_tensor(block_dates(train, first, tr.batch_size, cfg.data.prediction_horizon).copy())
            else:
                idx = torch.as_tensor(order[step * tr.batch_size: (step + 1) * tr.batch_size])
            x, r_daily, r_horizon = source.gather(idx)
            t, norm = training_step(cfg, model, optimizer, x, r_daily, r_horizon, epoch, step + 1,
                                    Path("ablation"), scales, r_target=source.train_target(idx))
            norms.append(norm)
            terms.append(t)
            for avg in averages.values():
                avg.update_parameters(model)
        scheduler.step()
        val = validate(cfg, model, source, prep.splits.val, scales=scales)
        idx, *moments = val_moments(cfg, model, source, prep.splits.val)
        mu = moments[0].numpy()
        row = {"epoch": epoch, "grad_median": float(np.median(norms)),
               "loss_return": float(np.mean([t["loss_return"] for t in terms])),
               "loss_cov": float(np.mean([t["loss_cov"] for t in terms])),
               "train_batch_sharpe": -float(np.mean([t["loss_sharpe"] for t in terms])),
               "val_sharpe": val["val_sharpe_ratio"], "val_turnover": val["val_turnover"],
               "val_loss": val["val_loss"], "val_ic": val_ic(source, idx, mu),
               "seconds": time.perf_counter() - start}
        row.update(decision_figures(cfg, model, source, idx, *moments, signal=signal))
        if model.feature_skip is not None:
            row.update(skip_parts(model, source, idx, mu))
        for d, avg in averages.items():
            v = validate(cfg, avg.module, source, prep.splits.val, scales=scales)
            row[f"val_sharpe_ema{d}"] = v["val_sharpe_ratio"]
            row[f"val_turnover_ema{d}"] = v["val_turnover"]
            row[f"val_ic_ema{d}"] = val_ic(source, *val_mu(cfg, avg.module, source, prep.splits.val))
        rows.append(row)
        print(json.dumps({"tag": args.tag, **{k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}}),
              flush=True)
    return rows


def main(argv=None) -> int:
    p = CliParser(prog="python -m benchmarks.ablation", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="run config (YAML); the synthetic panel unless data.panel_path")
    p.add_argument("--seed", type=int, default=42, help="seed (default 42)")
    p.add_argument("--tag", default="", help="label printed on every line")
    p.add_argument("--batch-dates", choices=["random", "blocks"], default=None,
                   help="random: shuffled training dates (the Ray loop's batches); blocks: each batch is "
                        "batch_size consecutive rebalance dates, one horizon apart, from a random start "
                        "(default: the config's training.batch_dates)")
    p.add_argument("--ema", type=float, action="append", default=[], metavar="DECAY",
                   help="also validate an exponential moving average of the weights with this per-step decay "
                        "(repeatable; training is unchanged)")
    p.add_argument("--skip-init", choices=["zeros", "probe"], default="zeros",
                   help="with model.heads.feature_skip: start the path at zeros or at the probe's ridge fit "
                        "on the train split (after the model is built: the RNG stream is unchanged)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    return run_cli(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
