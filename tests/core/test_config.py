"""The strict config loader: spec values, and every ConfigError case with a useful message."""

import dataclasses
from pathlib import Path

import pytest
import yaml

from core.config import Config, check_device, config_from_dict, load_config
from core.errors import ConfigError, DeviceError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
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
    tr = cfg.training  # the seed's learning rate and loss weights, under the A35 training budget and loss
    assert (tr.learning_rate, tr.alpha_return, tr.beta_cov, tr.gamma_sharpe, tr.lambda_tc) == (1e-4, 1.0, 0.5, 2.0, 0.0)
    assert (tr.steps_per_epoch, tr.return_loss, tr.rank_ic_anchor) == (54, "rank_ic", 0.1)


def test_smoke_keeps_data_shape_and_cpu():
    cfg = load_config(SMOKE)
    assert (cfg.data.num_factors, cfg.data.num_features) == (104, 9)
    assert cfg.training.device == "cpu"


def test_config_is_frozen_and_round_trips():
    cfg = load_config(FULL)
    with pytest.raises(dataclasses.FrozenInstanceError, match="cannot assign to field 'batch_size'"):
        cfg.training.batch_size = 1  # type: ignore[misc]
    assert cfg.training.batch_size == 128
    again = config_from_dict(cfg.to_dict())
    assert again == cfg
    assert isinstance(again, Config)


def _write(tmp_path, raw) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _raw():
    return yaml.safe_load(SMOKE.read_text())


def _put(section: str, key: str, value):
    """An edit of the raw YAML dict: ``section`` is dotted, e.g. "model.encoder" ("" = top level)."""
    def edit(raw):
        node = raw
        for part in filter(None, section.split(".")):
            node = node[part]
        node[key] = value
    return edit


# (case id, edit of the smoke config's YAML, the key the message must name, regex it must match)
BAD_CONFIGS = [
    ("unknown_key", _put("training", "lerning_rate", 0.1), "training.lerning_rate",
     r"unknown key 'training\.lerning_rate'"),
    ("unknown_section", _put("", "modle", {}), "modle", r"unknown key 'modle'"),
    ("decision_heads_compiled", lambda raw: (_put("training", "compile", True)(raw),
                                             _put("training", "decision_gradient", "heads")(raw)),
     "training.decision_gradient", r"= 'heads' is invalid: runs the heads a second time"),
    ("market_context_panel", lambda raw: (_put("model.encoder", "layout", "panel")(raw),
                                          _put("model.encoder", "market_context", False)(raw)),
     "model.encoder.market_context", r"= False is invalid: applies to layout: factorwise only"),
    ("attention_without_context", lambda raw: (_put("model.encoder", "factor_mixing", "attention")(raw),
                                               _put("model.encoder", "market_context", False)(raw)),
     "model.encoder.factor_mixing", r"= 'attention' is invalid: applies to layout: factorwise with market_context"),
    ("factor_mixing_typo", _put("model.encoder", "factor_mixing", "atention"), "model.encoder.factor_mixing",
     r"atention"),
    ("target_days_short", _put("training", "target_days", 3), "training.target_days",
     r"= 3 is invalid: must be null or >= data\.prediction_horizon = 5"),
    ("rank_ic_anchor_without_rank_ic", _put("training", "rank_ic_anchor", 0.3), "training.rank_ic_anchor",
     r"= 0\.3 is invalid: anchors the rank_ic return loss only \(return_loss = 'raw'\)"),
    ("rank_ic_anchor_negative", lambda raw: (_put("training", "return_loss", "rank_ic")(raw),
                                             _put("training", "rank_ic_anchor", -0.1)(raw)),
     "training.rank_ic_anchor", r"= -0\.1 is invalid: must be >= 0"),
    ("wrong_type_str", _put("model.encoder", "hidden_dim", "big"), "model.encoder.hidden_dim",
     r"= 'big' has the wrong type"),
    ("wrong_type_float", _put("training", "batch_size", 3.5), "training.batch_size", r"= 3\.5 has the wrong type"),
    ("wrong_type_bool", _put("training", "compile", "yes"), "training.compile", r"= 'yes' has the wrong type"),
    ("wrong_type_list", _put("model.encoder", "cell_types", "sLSTM"), "model.encoder.cell_types",
     r"= 'sLSTM' has the wrong type; expected list of"),
    ("unknown_cell_type", _put("model.encoder", "cell_types", ["sLSTM", "GRU"]), "model.encoder.cell_types[1]",
     r"= 'GRU' is not allowed; expected one of 'sLSTM', 'mLSTM'"),
    ("cell_types_length", _put("model.encoder", "cell_types", ["sLSTM"]), "model.encoder.cell_types",
     r"= \['sLSTM'\].*num_layers = 2"),
    ("dropout_length", _put("model.encoder", "dropout", [0.1, 0.1, 0.1]), "model.encoder.dropout",
     r"= \[0\.1, 0\.1, 0\.1\].*num_layers = 2"),
    ("zero_learning_rate", _put("training", "learning_rate", 0), "training.learning_rate",
     r"= 0\.0 is invalid: must be > 0"),
    ("negative_learning_rate", _put("training", "learning_rate", -1e-3), "training.learning_rate",
     r"= -0\.001 is invalid: must be > 0"),
    ("horizon_equals_lookback", _put("data", "prediction_horizon", 20), "data.prediction_horizon",
     r"= 20 is invalid: must be shorter than data\.lookback_days = 20"),
    ("horizon_beyond_lookback", _put("data", "prediction_horizon", 30), "data.prediction_horizon",
     r"= 30 is invalid: must be shorter than data\.lookback_days = 20"),
    ("purge_below_horizon", _put("data", "purge_days", 2), "data.purge_days", r"= 2.*prediction_horizon = 5"),
    ("unknown_device", _put("training", "device", "tpu"), "training.device",
     r"= 'tpu' is not allowed; expected one of 'cpu'"),
    ("unknown_precision", _put("training", "precision", "float16"), "training.precision",
     r"= 'float16' is not allowed; expected one of 'float32', 'bfloat16'"),
    ("bf16_on_mps", lambda r: r["training"].update(device="mps", precision="bfloat16"), "training.precision",
     r"= 'bfloat16' is invalid: bfloat16 autocast runs on cuda and cpu only, not on 'mps'"),
    ("compile_on_mps", lambda r: r["training"].update(device="mps", compile=True), "training.compile",
     r"= True is invalid: torch.compile runs on cuda and cpu only, not on 'mps'"),
    ("infeasible_max_weight", _put("portfolio", "max_weight", 0.005), "portfolio.max_weight",
     r"= 0\.005 is invalid: max_weight \* num_factors must be >= 1"),
    ("duplicate_seeds", _put("ensemble", "seeds", [1, 1]), "ensemble.seeds", r"= \[1, 1\].*distinct"),
    ("missing_required_key", lambda r: r["training"].pop("device"), "training.device", r"missing required key"),
]


@pytest.mark.parametrize("case, edit, key, pattern", BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_bad_config_is_refused_with_file_key_and_value(tmp_path, case, edit, key, pattern):
    raw = _raw()
    edit(raw)
    path = _write(tmp_path, raw)
    with pytest.raises(ConfigError, match=pattern) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message and key in message, message


def test_bf16_and_compile_are_allowed_on_cpu():
    """The GPU job's precision and compile rehearse on CPU (tests/ray_jobs/test_precision.py)."""
    cfg = load_config(SMOKE, ["training.precision=bfloat16", "training.compile=true"])
    assert (cfg.training.device, cfg.training.precision, cfg.training.compile) == ("cpu", "bfloat16", True)


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


def test_unavailable_device_is_a_config_error_naming_the_key():
    import torch

    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    unavailable = [device for device, ok in available.items() if not ok]
    assert unavailable, "no machine has both CUDA and MPS"
    for device in unavailable:
        pattern = rf"training\.device = '{device}' but .* --set training\.device=cpu"
        with pytest.raises(ConfigError, match=pattern) as info:
            check_device(device)
        assert isinstance(info.value, DeviceError)  # specific, and a ConfigError: the fix is a config value
    assert check_device("cpu") == "cpu"


def test_bf16_on_a_gpu_without_it_is_refused(monkeypatch):
    """A pre-Ampere GPU (compute capability 7.0) emulates bfloat16: refused, never run slowly or in float32."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100-SXM2-16GB")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    assert check_device("cuda", "float32") == "cuda"
    with pytest.raises(ConfigError, match=r"training\.precision = 'bfloat16' but this GPU \(Tesla V100-SXM2-16GB, "
                                          r"compute capability 7\.0\) has no bfloat16 support.*precision=float32"):
        check_device("cuda", "bfloat16")


def test_config_reference_doc_matches_the_code():
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    fresh = subprocess.run(
        [sys.executable, str(root / "docs" / "gen_configs_md.py")], capture_output=True, text=True,
        check=True, cwd=root, env={"PYTHONPATH": str(root), "PATH": ""},
    ).stdout
    assert fresh == (root / "docs" / "configs.md").read_text(), "run: python docs/gen_configs_md.py > docs/configs.md"
