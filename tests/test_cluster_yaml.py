"""cluster.yaml passes Ray's own cluster-launcher validator and keeps the production promises."""

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _validate(cfg: dict) -> None:
    from ray.autoscaler._private.util import fillout_defaults, validate_config

    validate_config(fillout_defaults(cfg))


def _load() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_cluster_yaml_passes_rays_validator():
    _validate(_load())


def test_validator_catches_a_typo():
    cfg = _load()
    cfg["setup_comands"] = cfg.pop("setup_commands")
    with pytest.raises(Exception, match="setup_comands"):
        _validate(cfg)


def test_head_and_h100_workers_installing_this_project():
    cfg = _load()
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    workers = [t for name, t in types.items() if name != cfg["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    assert workers and all(w["resources"]["GPU"] >= 1 and w["min_workers"] >= 1 for w in workers)
    assert all(w["node_config"]["InstanceType"].startswith("p5.") for w in workers)  # H100 family
    assert any("pip install -e ." in c for c in cfg["setup_commands"])
    assert "." in cfg["file_mounts"].values()


def test_dashboard_is_not_exposed_publicly():
    head_cmds = " ".join(_load()["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_cmds
    assert "0.0.0.0" not in head_cmds
