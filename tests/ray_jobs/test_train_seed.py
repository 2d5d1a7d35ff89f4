"""One seed end to end on a real local Ray cluster with the tiny smoke config."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from core.config import load_config
from core.errors import SolverError, TrainingError
from ray_jobs.run_folder import read_history

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "model_config_cpu_smoke.yaml"
pytestmark = pytest.mark.slow


def _tb_tags(folder: Path) -> set[str]:
    """Scalar tags in tensorboardX event files, read with its own protobuf (TFRecord framing)."""
    from tensorboardX.proto import event_pb2

    tags = set()
    for path in folder.glob("events.out.tfevents.*"):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos: pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12: pos + 12 + length])
            tags.update(v.tag for v in event.summary.value)
            pos += 12 + length + 4
    return tags


@pytest.fixture(scope="module")
def smoke_run(ray_cluster, tmp_path_factory):
    from ray_jobs.seed_run import train_one_seed

    # Full passes over the training split: epoch means are then comparable (8-step epochs are noise).
    cfg = load_config(SMOKE, ["training.max_epochs=3", "training.patience=10", "training.steps_per_epoch=null"])
    out = tmp_path_factory.mktemp("smoke")
    info, result = train_one_seed(cfg, 42, out)
    return cfg, out / "seed_42", info, result


def test_reported_iterations_equal_epochs_run(smoke_run):
    cfg, run_dir, info, result = smoke_run
    epochs = [m["epoch"] for m in read_history(run_dir)]
    assert epochs == [1, 2, 3] and info["epochs_run"] == 3
    assert result.metrics["epoch"] == 3  # what Ray saw last
    assert info["best_epoch"] == int(np.argmax([m["val_sharpe"] for m in read_history(run_dir)])) + 1


def test_training_loss_goes_down(smoke_run):
    _, run_dir, _, _ = smoke_run
    losses = [m["loss"] for m in read_history(run_dir)]
    assert losses[-1] < losses[0], losses


def test_tensorboard_has_the_metrics(smoke_run):
    _, run_dir, _, _ = smoke_run
    tags = _tb_tags(run_dir / "tensorboard")
    for tag in ("val_sharpe_ratio", "loss_sharpe", "gradient_norm", "val_turnover", "learning_rate", "samples_per_s"):
        assert tag in tags, sorted(tags)


def test_checkpoint_reproduces_reported_validation_with_pandas(smoke_run):
    """latest.pt reloads; its weights give the reported val_sharpe_ratio, recomputed with pandas."""
    from data import prepare
    from model.checkpoint import load_checkpoint, load_model
    from data.splits import rebalance_indices
    from ray_jobs.steps import chain_solves
    from ray_jobs.steps import predict_moments

    cfg, run_dir, _, _ = smoke_run
    payload = load_checkpoint(run_dir / "latest.pt")
    model, _ = load_model(run_dir / "latest.pt")
    prepared = prepare(cfg)
    assert payload["data_fingerprint"] == prepared.panel.fingerprint and payload["seed"] == 42
    source = prepared.window_source("cpu")
    idx = rebalance_indices(prepared.splits.val, cfg.data.prediction_horizon)
    mu, f, d = predict_moments(cfg, model, source, idx)
    weights, _ = chain_solves(model.portfolio, mu, f, d, cfg.portfolio.tc_rate)
    w = pd.DataFrame(weights.numpy(), index=prepared.panel.dates[idx], columns=prepared.panel.factors)
    h = cfg.data.prediction_horizon
    ret = pd.DataFrame(prepared.panel.returns, index=prepared.panel.dates, columns=prepared.panel.factors)
    fwd = (1 + ret).rolling(h).apply(np.prod, raw=True).shift(-h) - 1  # compounded t+1..t+h
    traded = (w - w.shift(1).fillna(1 / w.shape[1])).abs().sum(axis=1)
    net = (w * fwd.loc[w.index]).sum(axis=1) - cfg.portfolio.tc_rate * traded
    sharpe = net.mean() / net.std() * math.sqrt(252 / h)
    reported = read_history(run_dir)[-1]
    assert reported["val_sharpe_ratio"] == pytest.approx(sharpe, abs=1e-6)
    assert reported["val_turnover"] == pytest.approx((traded / 2).mean(), abs=1e-7)
    assert np.allclose(w.sum(axis=1), 1.0, atol=1e-6)


def test_finished_run_is_not_overwritten(smoke_run):
    from ray_jobs.seed_run import train_one_seed

    cfg, run_dir, _, _ = smoke_run
    before = (run_dir / "best.pt").read_bytes()
    with pytest.raises(TrainingError, match="already holds a finished run"):
        train_one_seed(cfg, 42, run_dir.parent)
    assert (run_dir / "best.pt").read_bytes() == before


def test_patience_stops_a_run_early(ray_cluster, tmp_path):
    from ray_jobs.seed_run import train_one_seed

    # No later epoch can beat the first by 100 Sharpe units: patience 2 stops after epoch 3.
    cfg = load_config(SMOKE, ["training.max_epochs=6", "training.patience=2", "training.min_delta=100.0"])
    info, _ = train_one_seed(cfg, 7, tmp_path)
    assert info["epochs_run"] == 3 and info["best_epoch"] == 1
    assert "patience" in info["stop_reason"]


def _one_step_setup(batch: int = 4):
    from model.network import XLSTMPortfolio
    from ray_jobs.steps import make_optimizer

    cfg = load_config(SMOKE)
    torch.manual_seed(0)
    model = XLSTMPortfolio.from_config(cfg)
    optimizer, _ = make_optimizer(model, cfg)
    n, f, lb, h = cfg.data.num_factors, cfg.data.num_features, cfg.data.lookback_days, cfg.data.prediction_horizon
    x = torch.randn(batch, lb, n, f)
    r_daily = torch.randn(batch, h, n) * 0.01
    return cfg, model, optimizer, x, r_daily


def test_nan_loss_stops_with_epoch_step_and_batch_element(tmp_path):
    from ray_jobs.steps import training_step

    cfg, model, optimizer, x, r_daily = _one_step_setup()
    r_daily[1, 0, 0] = float("nan")
    r_h = torch.prod(1 + r_daily, dim=1) - 1
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(TrainingError, match=r"non-finite loss .* at epoch 4, step 9; non-finite r_daily at batch "
                                            r"element\(s\) \[1\]; training stopped before the first checkpoint"):
        training_step(cfg, model, optimizer, x, r_daily, r_h, epoch=4, step=9, run_dir=tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # no update applied


def test_solver_failure_stops_with_epoch_step_and_batch_element(tmp_path):
    from ray_jobs.steps import training_step

    cfg, model, optimizer, x, r_daily = _one_step_setup()
    x[2] = float("nan")  # a corrupt window reaching the model: its mu is NaN, the solve is refused
    r_h = torch.prod(1 + r_daily, dim=1) - 1
    (tmp_path / "latest.pt").write_bytes(b"stands for the last good checkpoint")
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(SolverError, match=r"^epoch 3, step 5: portfolio layer \(torch\): batch element 2 \(of 1 bad\): mu "
                                          rf"contains NaN.*the last good checkpoint is {tmp_path / 'latest.pt'}"):
        training_step(cfg, model, optimizer, x, r_daily, r_h, epoch=3, step=5, run_dir=tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_two_workers_train_one_seed_data_parallel(ray_cluster, tmp_path):
    """num_workers=2: DDP over two Ray Train workers, the global batch split between them."""
    from model.checkpoint import load_model
    from ray_jobs.seed_run import train_one_seed

    cfg = load_config(SMOKE, ["training.max_epochs=1", "resources.num_workers=2", "training.steps_per_epoch=4"])
    info, _ = train_one_seed(cfg, 5, tmp_path)
    (epoch,) = read_history(tmp_path / "seed_5")
    assert info["epochs_run"] == 1
    assert epoch["samples"] == 4 * cfg.training.batch_size // 2  # rank 0's half of each global batch
    model, payload = load_model(tmp_path / "seed_5" / "best.pt")
    assert payload["epoch"] == 1 and not any(k.startswith("module.") for k in payload["model_state"])
