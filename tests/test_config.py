"""The strict config loader: spec values, and every ConfigError case with a useful message."""

from pathlib import Path

import pytest
import yaml

from model.config import Config, check_device, config_from_dict, load_config
from model.errors import ConfigError, DeviceError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
FULL = CONFIGS / "model_config_h100_full.yaml"
MAC = CONFIGS / "model_config_mac_test.yaml"
SMOKE = CONFIGS / "model_config_cpu_smoke.yaml"


def test_h100_full_matches_spec():
    cfg = load_config(FULL)
    enc = cfg.model.encoder
    assert (enc.num_layers, enc.hidden_dim) == (6, 1024)
    assert enc.cell_types == ("sLSTM", "sLSTM", "mLSTM", "mLSTM", "mLSTM", "mLSTM")
    assert enc.dropout == (0.1, 0.1, 0.1, 0.15, 0.15, 0.2)
    d = cfg.data
    assert (d.lookback_days, d.prediction_horizon, d.num_factors, d.num_features) == (250, 5, 104, 9)
    t = cfg.training
    assert (t.batch_size, t.max_epochs, t.learning_rate) == (128, 300, 1e-4)
    assert (t.device, t.precision, t.compile) == ("cuda", "bfloat16", True)
    assert (t.alpha_return, t.beta_cov, t.gamma_sharpe, t.lambda_tc) == (1.0, 0.5, 2.0, 0.0)
    assert cfg.ensemble.seeds == (42, 123, 456, 789, 1024)


def test_mac_test_matches_spec():
    cfg = load_config(MAC)
    assert (cfg.model.encoder.num_layers, cfg.model.encoder.hidden_dim) == (2, 256)
    assert cfg.data.lookback_days == 60
    assert (cfg.training.batch_size, cfg.training.max_epochs, cfg.training.device) == (32, 5, "mps")
    assert cfg.ensemble.seeds == (42, 123, 456, 789, 1024)


def test_smoke_keeps_data_shape_and_cpu():
    cfg = load_config(SMOKE)
    assert (cfg.data.num_factors, cfg.data.num_features) == (104, 9)
    assert cfg.training.device == "cpu"


def test_config_is_frozen_and_round_trips():
    cfg = load_config(FULL)
    with pytest.raises(Exception):
        cfg.training.batch_size = 1  # type: ignore[misc]
    again = config_from_dict(cfg.to_dict())
    assert again == cfg
    assert isinstance(again, Config)


def _write(tmp_path, raw) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _raw():
    return yaml.safe_load(SMOKE.read_text())


@pytest.mark.parametrize(
    "edit, pattern",
    [
        (lambda r: r["training"].__setitem__("lerning_rate", 0.1), r"unknown key 'training\.lerning_rate'"),
        (lambda r: r.__setitem__("modle", {}), r"unknown key 'modle'"),
        (lambda r: r["model"]["encoder"].__setitem__("hidden_dim", "big"), r"model\.encoder\.hidden_dim = 'big' has the wrong type"),
        (lambda r: r["training"].__setitem__("batch_size", 3.5), r"training\.batch_size = 3\.5 has the wrong type"),
        (lambda r: r["training"].__setitem__("compile", "yes"), r"training\.compile = 'yes' has the wrong type"),
        (lambda r: r["model"]["encoder"].__setitem__("cell_types", ["sLSTM", "GRU"]), r"cell_types\[1\] = 'GRU' is not allowed"),
        (lambda r: r["model"]["encoder"].__setitem__("cell_types", ["sLSTM"]), r"cell_types = \['sLSTM'\].*num_layers = 2"),
        (lambda r: r["model"]["encoder"].__setitem__("dropout", [0.1, 0.1, 0.1]), r"dropout = \[0\.1, 0\.1, 0\.1\].*num_layers = 2"),
        (lambda r: r["data"].__setitem__("prediction_horizon", 20), r"prediction_horizon = 20.*lookback_days = 20"),
        (lambda r: r["data"].__setitem__("purge_days", 2), r"data\.purge_days = 2.*prediction_horizon = 5"),
        (lambda r: r["portfolio"].__setitem__("max_weight", 0.005), r"portfolio\.max_weight = 0\.005"),
        (lambda r: r["training"].__setitem__("precision", "bfloat16"), r"training\.precision = 'bfloat16'.*cuda only"),
        (lambda r: r["ensemble"].__setitem__("seeds", [1, 1]), r"ensemble\.seeds = \[1, 1\].*distinct"),
        (lambda r: r["training"].pop("device"), r"missing required key 'training\.device'"),
    ],
)
def test_bad_config_is_refused_with_file_key_and_value(tmp_path, edit, pattern):
    raw = _raw()
    edit(raw)
    path = _write(tmp_path, raw)
    with pytest.raises(ConfigError, match=pattern) as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_set_overrides_apply_and_are_checked():
    cfg = load_config(MAC, ["training.device=cpu", "training.max_epochs=2", "model.encoder.dropout=[0.0, 0.2]"])
    assert cfg.training.device == "cpu" and cfg.training.max_epochs == 2
    assert cfg.model.encoder.dropout == (0.0, 0.2)
    with pytest.raises(ConfigError, match=r"--set training\.devise=cpu.*unknown key 'training\.devise'"):
        load_config(MAC, ["training.devise=cpu"])
    with pytest.raises(ConfigError, match=r"expected KEY=VALUE"):
        load_config(MAC, ["training.device"])


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError, match="empty"):
        load_config(empty)


def test_unavailable_device_is_refused_by_name():
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="'cuda'.*no CUDA GPU"):
            check_device("cuda")
    if not torch.backends.mps.is_available():
        with pytest.raises(DeviceError, match="'mps'.*not available"):
            check_device("mps")
    assert check_device("cpu") == "cpu"


def test_config_reference_doc_matches_the_code():
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    fresh = subprocess.run(
        [sys.executable, str(root / "docs" / "gen_configs_md.py")], capture_output=True, text=True,
        check=True, cwd=root, env={"PYTHONPATH": str(root), "PATH": ""},
    ).stdout
    assert fresh == (root / "docs" / "configs.md").read_text(), "run: python docs/gen_configs_md.py > docs/configs.md"
