"""Ray's reservations live in their own section, apart from training hyperparameters."""

from pathlib import Path

import pytest
import yaml

from core.config import ResourcesConfig, load_config, stored_config
from core.errors import ConfigError
from model.spec import ModelSpec

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
FULL = CONFIGS / "model_config_h100_full.yaml"
SMOKE = CONFIGS / "model_config_cpu_smoke.yaml"


def test_h100_full_packs_five_seeds_on_one_gpu():
    res = load_config(FULL).resources
    assert res == ResourcesConfig(num_workers=1, cpus_per_worker=2.0, gpus_per_worker=0.2)


def test_resource_key_under_training_names_its_new_place(tmp_path):
    raw = yaml.safe_load(SMOKE.read_text())
    raw["training"]["gpus_per_worker"] = 0.0
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"'training.gpus_per_worker' .*moved to 'resources.gpus_per_worker'"):
        load_config(path)


def test_cuda_without_a_gpu_share_is_refused_under_resources():
    with pytest.raises(ConfigError, match=r"resources.gpus_per_worker = 0.0 is invalid: training.device cuda needs"):
        load_config(FULL, ["resources.gpus_per_worker=0"])


def test_a_checkpoint_written_before_the_section_reads_with_its_values():
    cfg = load_config(FULL)
    raw = cfg.to_dict()
    old = dict(raw, training={**raw["training"], **raw.pop("resources")})  # the layout before
    assert "gpus_per_worker" in old["training"] and "resources" not in old
    assert stored_config(old, "old checkpoint") == cfg


def test_the_model_spec_ignores_resources_and_training_hyperparameters():
    a = load_config(SMOKE)
    b = load_config(SMOKE, ["resources.cpus_per_worker=3", "resources.num_workers=2",
                            "training.learning_rate=0.5", "training.output_dir=elsewhere"])
    assert ModelSpec.of(a) == ModelSpec.of(b)
    c = load_config(SMOKE, ["model.heads.cov_rank=3"])
    assert ModelSpec.of(c) != ModelSpec.of(a)


def test_an_h100_spec_runs_on_cpu_with_the_same_architecture():
    spec = ModelSpec.of(load_config(FULL, ["model.encoder.slstm_backend=cuda"]))
    cpu = spec.for_device("cpu")
    assert (spec.precision, cpu.precision) == ("bfloat16", "float32")
    assert cpu.encoder.slstm_backend == "auto" and cpu.architecture() == spec.architecture()
    assert spec.for_device("cuda") is spec
