"""Shared fixtures: one real local Ray cluster for the Ray tests, with its files in a temp dir."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "model_config_cpu_smoke.yaml"

# `make test` runs the Ray tests (marked `slow`) as two pytest processes at once, each with one
# local cluster of its own at a time: -m "slow and not lane2" and -m "slow and lane2".  These
# modules are the second lane, chosen so that the two lanes take about as long (the timings:
# docs/performance.md).  A single `pytest tests` still runs every test, one module after another.
SECOND_LANE = frozenset({
    "test_train_seed.py", "test_driver_kill.py", "test_ensemble.py", "test_train_runs_ensemble.py",
    "test_data_stream.py", "test_two_local_runs.py",
})


def pytest_configure(config):
    config.addinivalue_line("markers", "lane2: Ray tests of make test's second lane (tests/conftest.py)")


@pytest.hookimpl(tryfirst=True)  # before -m selects on the markers
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in SECOND_LANE:
            item.add_marker(pytest.mark.lane2)


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """``ray.init(num_cpus=2)`` on 127.0.0.1, temp files and auth token under pytest's tmp dir.

    Module scope: each module's cluster is stopped before the next module runs, so a pytest
    process holds at most one at a time.  Every test that starts a cluster of its own stops that
    cluster alone (its process group; never ``ray stop``, which would kill the clusters of a
    second pytest process: ``make test`` runs the Ray tests in two lanes at once).
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
