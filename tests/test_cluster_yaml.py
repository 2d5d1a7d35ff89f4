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


def test_gpu_nodes_can_build_the_slstm_cuda_kernel():
    """nvcc + ninja on the GPU nodes (the kernel JIT-builds on first use; benchmarks/gpu_check.sh)."""
    worker_cmds = " ".join(_load()["worker_setup_commands"])
    assert "pip install ninja" in worker_cmds and "/usr/local/cuda/bin" in worker_cmds and "nvcc" in worker_cmds


def test_dashboard_is_not_exposed_publicly():
    cfg = _load()
    head_cmds = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_cmds
    every_cmd = " ".join(cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"] + cfg["setup_commands"])
    assert "0.0.0.0" not in every_cmd and "::" not in every_cmd
    assert "--ray-client-server-port" not in every_cmd  # the job / client port stays Ray's internal default


WORLD = {"0.0.0.0/0", "::/0"}


def _open_to_the_world(rules: list[dict]) -> list[tuple]:
    """(protocol, from port, to port) of every inbound rule that admits any address."""
    out = []
    for rule in rules:
        cidrs = {r["CidrIp"] for r in rule.get("IpRanges", [])} | {r["CidrIpv6"] for r in rule.get("Ipv6Ranges", [])}
        if cidrs & WORLD:
            out.append((rule["IpProtocol"], rule.get("FromPort"), rule.get("ToPort")))
    return out


def _inbound_rules(cfg: dict) -> list[dict]:
    """The inbound rules Ray's AWS launcher gives the security group it creates for this cluster.

    Runs the installed Ray's own rule builders, taken from its source: the module imports boto3,
    which only the machine that runs ``ray up`` needs.
    """
    import ast
    import importlib.util
    import itertools

    origin = importlib.util.find_spec("ray.autoscaler._private.aws.config").origin
    builders = {"_create_default_inbound_rules", "_create_default_intracluster_inbound_rules",
                "_create_default_ssh_inbound_rules"}
    tree = ast.parse(Path(origin).read_text())
    body = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name in builders]
    assert {node.name for node in body} == builders, f"Ray's {origin} changed: check the security group by hand"
    namespace = {"itertools": itertools}
    exec(compile(ast.Module(body, type_ignores=[]), origin, "exec"), namespace)
    extra = cfg["provider"].get("security_group", {}).get("IpPermissions", [])
    return namespace["_create_default_inbound_rules"](["sg-of-this-cluster"], extra)


def test_only_ssh_is_open_to_the_world():
    cfg = _load()
    # Groups of our own would bypass Ray's; none are configured, so the launcher's rules below are all.
    assert all("SecurityGroupIds" not in t["node_config"] for t in cfg["available_node_types"].values())
    assert _open_to_the_world(_inbound_rules(cfg)) == [("tcp", 22, 22)]  # dashboard and jobs: SSH tunnel only


def test_world_open_check_catches_a_public_dashboard_rule():
    cfg = _load()
    cfg["provider"]["security_group"] = {"IpPermissions": [
        {"IpProtocol": "tcp", "FromPort": 8265, "ToPort": 8265, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
    ]}
    assert ("tcp", 8265, 8265) in _open_to_the_world(_inbound_rules(cfg))


def test_the_production_run_writes_to_shared_storage():
    """cluster.yaml and the README submit the H100 ensemble with an s3:// --storage, and the GPU
    workers, which write the checkpoints, carry an instance profile for it (no keys in the file)."""
    import re

    cfg = _load()
    for name in ("cluster.yaml", "README.md"):
        commands = re.findall(r"ray_jobs\.ensemble --config configs/model_config_h100_full\.yaml[^\n]*",
                              (ROOT / name).read_text())
        assert commands and all(re.search(r"--storage s3://\w", c) for c in commands), (name, commands)
    workers = [t for name, t in cfg["available_node_types"].items() if name != cfg["head_node_type"]]
    assert all(w["node_config"]["IamInstanceProfile"]["Name"] for w in workers)
    assert not re.search(r"(?i)aws_secret|secret_key|access_key", (ROOT / "cluster.yaml").read_text())
