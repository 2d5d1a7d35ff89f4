"""Checkpoints: weights-only loadable, atomic, rebuild the model from the stored config alone."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from model.checkpoint import FORMAT_VERSION, load_checkpoint, load_model, save_checkpoint
from core.config import load_config
from core.errors import CheckpointError
from model.spec import ModelSpec
from model.network import XLSTMPortfolio
from model.slstm_fast import slstm_cells

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
N_FACTORS, N_FEATURES, LOOKBACK = 5, 9, 20
SMALL = [
    f"data.lookback_days={LOOKBACK}", f"data.num_factors={N_FACTORS}", "portfolio.max_weight=0.5",
    "portfolio.solver=torch", "model.encoder.hidden_dim=32", "model.heads.cov_rank=2", "model.encoder.patch_days=5",
]


def trained_model(cfg, seed: int = 0) -> XLSTMPortfolio:
    """A model whose sLSTM recurrent kernels are non-zero (upstream initialises them to zero)."""
    torch.manual_seed(seed)
    model = XLSTMPortfolio.from_config(cfg)
    with torch.no_grad():
        for cell in slstm_cells(model).values():
            cell._recurrent_kernel_.normal_(0, 0.2)
            cell._bias_.normal_(0, 1)
    return model


def windows(batch: int = 3) -> torch.Tensor:
    return torch.randn(batch, LOOKBACK, N_FACTORS, N_FEATURES, generator=torch.Generator().manual_seed(1))


def extras(model) -> dict:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.predict_moments(windows())[0].sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=3)
    return dict(
        optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), epoch=3, seed=42,
        normalizer={"mean": torch.arange(9.0), "std": [1.0, 2.0]}, data_fingerprint="ab12cd",
        metrics={"val_sharpe": 0.5, "should_stop": False, "stop_reason": None},
    )


def test_saved_and_reloaded_model_gives_identical_outputs(tmp_path):
    cfg = load_config(CONFIGS / "model_config_cpu_smoke.yaml", SMALL)
    model = trained_model(cfg)
    extra = extras(model)
    path = save_checkpoint(tmp_path / "run" / "best.pt", model, cfg, **extra)
    assert sorted(os.listdir(path.parent)) == ["best.pt"]  # no temporary file left behind

    raw = torch.load(path, weights_only=True)
    assert raw["format_version"] == FORMAT_VERSION and raw["config"] == cfg.to_dict()
    assert "encoder.stack.blocks.0.xlstm.slstm_cell.recurrent_kernel" in raw["model_state"]
    assert raw["epoch"] == 3 and raw["data_fingerprint"] == "ab12cd" and raw["metrics"] == extra["metrics"]
    assert torch.equal(raw["normalizer"]["mean"], torch.arange(9.0))
    assert raw["optimizer"]["state"][0]["step"] == extra["optimizer"]["state"][0]["step"]

    loaded, payload = load_model(path, device="cpu")
    assert not loaded.training and loaded.spec == ModelSpec.of(cfg)
    model.eval()
    x = windows()
    with torch.no_grad():
        want, got = model(x), loaded(x)
    for a, b in zip(want, got):
        assert torch.equal(a, b)
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name


def test_a_cuda_run_checkpoint_loads_on_cpu(tmp_path):
    full = load_config(
        CONFIGS / "model_config_h100_full.yaml",
        SMALL + ["model.encoder.slstm_backend=cuda", "model.encoder.num_layers=2",
                 "model.encoder.cell_types=[sLSTM,mLSTM]", "model.encoder.dropout=[0.1,0.2]"],
    )
    assert (full.training.device, full.training.precision, full.training.compile) == ("cuda", "bfloat16", True)
    cpu_cfg = load_config(
        CONFIGS / "model_config_h100_full.yaml",
        SMALL + ["model.encoder.num_layers=2", "model.encoder.cell_types=[sLSTM,mLSTM]",
                 "model.encoder.dropout=[0.1,0.2]", "training.device=cpu", "training.precision=float32",
                 "training.compile=false", "resources.gpus_per_worker=0"],
    )
    model = trained_model(cpu_cfg)  # stands in for the cuda-trained model: weights are backend-neutral
    path = save_checkpoint(tmp_path / "h100.pt", model, full)
    loaded, payload = load_model(path, device="cpu")
    assert payload["config"]["training"]["device"] == "cuda"  # the stored config is untouched
    assert loaded.spec.precision == "float32" and loaded.encoder.slstm_backend == "fast"
    x = windows()
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval().predict_moments(x), model.eval().predict_moments(x), rtol=0, atol=0)


def test_refuses_values_weights_only_loading_cannot_read(tmp_path):
    cfg = load_config(CONFIGS / "model_config_cpu_smoke.yaml", SMALL)
    model = XLSTMPortfolio.from_config(cfg)
    with pytest.raises(CheckpointError, match=r"checkpoint\['metrics'\]\['val_sharpe'\] is a numpy.float64"):
        save_checkpoint(tmp_path / "a.pt", model, cfg, metrics={"val_sharpe": np.float64(0.3)})
    with pytest.raises(CheckpointError, match="reserved checkpoint keys"):
        save_checkpoint(tmp_path / "a.pt", model, cfg, config={})
    other = load_config(CONFIGS / "model_config_cpu_smoke.yaml", SMALL + ["model.heads.cov_rank=3"])
    with pytest.raises(CheckpointError, match="does not describe this model"):
        save_checkpoint(tmp_path / "a.pt", model, other)
    assert not any(tmp_path.iterdir())  # nothing written


def test_load_refuses_missing_corrupt_and_unknown_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    cfg = load_config(CONFIGS / "model_config_cpu_smoke.yaml", SMALL)
    good = save_checkpoint(tmp_path / "good.pt", XLSTMPortfolio.from_config(cfg), cfg)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="corrupt or not a weights-only checkpoint"):
        load_checkpoint(truncated)
    torch.save({"format_version": 99, "config": {}, "model_state": {}}, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="format_version 99 is unknown"):
        load_checkpoint(tmp_path / "future.pt")
    torch.save({"format_version": FORMAT_VERSION, "config": {}, "model_state": {}, "x": np.zeros(2)}, tmp_path / "np.pt")
    with pytest.raises(CheckpointError, match="corrupt or not a weights-only checkpoint"):
        load_checkpoint(tmp_path / "np.pt")
