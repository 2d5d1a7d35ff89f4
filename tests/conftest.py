"""Shared fixtures: one real local Ray cluster for the Ray tests, with its files in a temp dir."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "model_config_cpu_smoke.yaml"


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """``ray.init(num_cpus=2)`` on 127.0.0.1, temp files and auth token under pytest's tmp dir.

    Module scope: each module's cluster is stopped before the next module runs, so the
    ``ray start`` / ``ray stop`` test never meets (or kills) another test's cluster.
    """
    import ray

    from ray_jobs.ray_cluster import ray_session

    root = tmp_path_factory.mktemp("ray")
    os.environ.pop("RAY_ADDRESS", None)
    # The auth token path stays exported for the whole session: Ray's token loader caches the
    # first token it reads, so every cluster of this process must use that same token file.
    with ray_session(root, num_cpus=2) as address:
        yield address
    assert not ray.is_initialized()
