"""Start or join a Ray cluster, keeping Ray's files inside the run's own directory.

* ``RAY_ADDRESS`` set: join that cluster (``ray job submit`` sets it for the job's driver).
* otherwise: start a local cluster bound to 127.0.0.1 with its temp files under ``root/ray``,
  on a GCS port chosen here and exported as ``RAY_ADDRESS`` to the cluster's processes (below).

Token authentication stays on for local clusters, but the token lives in ``root/ray_auth_token``
(not ``~/.ray``): we export ``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN_PATH`` so the cluster
and every worker agree (the auth-mode trap in docs/training.md).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import tempfile
from pathlib import Path
from typing import Iterator, Optional

import ray
from ray._private import ray_constants
from ray._raylet import Config as RayConfig

from core.errors import TrainingError

log = logging.getLogger(__name__)

# Unix sockets live under the temp dir and must stay below 107 bytes.  Ray appends
# "/session_<date>_<time>_<usec>_<pid>" (~38) and "/sockets/dash_<Module>Head" (up to ~30):
# a temp dir longer than 30 bytes gets a short link instead (a 45-byte one broke the dashboard).
_MAX_TEMP_DIR_LEN = 30


def ensure_auth_token(root: Path) -> Path:
    """Create (once) a private token file for local clusters and export the auth env vars."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return Path()
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or (root / "ray_auth_token")).resolve()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(path)
    # Ray caches its config at import; re-read it the way ray.init's own token set-up does.
    RayConfig.initialize("")
    return path


def bind_to_loopback() -> None:
    """Make a local cluster use 127.0.0.1 for every address.

    ``ray.init(_node_ip_address="127.0.0.1")`` is rewritten by Ray to the routable IP on Linux;
    Ray uses the loopback address only in its single-machine mode (the default on macOS), which
    this switch selects.  Workers inherit the environment variable.
    """
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False  # the env var is read once at import


def _temp_dir(root: Path) -> str:
    """Ray's temp dir under ``root``; a short symlinked path when ``root`` is too deep."""
    target = (root / "ray").resolve()
    target.mkdir(parents=True, exist_ok=True)
    if len(str(target)) <= _MAX_TEMP_DIR_LEN:
        return str(target)
    # Socket paths would be too long: point a short link in the system temp dir at our folder.
    link = Path(tempfile.mkdtemp(prefix="xlp_")) / "r"
    link.symlink_to(target, target_is_directory=True)
    return str(link)


@contextlib.contextmanager
def ray_session(root: Path, num_cpus: Optional[int] = None, num_gpus: Optional[int] = None) -> Iterator[str]:
    """Yield the address of a running Ray cluster; stop it afterwards if we started it."""
    if ray.is_initialized():  # e.g. a test's cluster: use it, leave it running
        yield ray.get_runtime_context().gcs_address
        return
    address = os.environ.get("RAY_ADDRESS")
    if address:
        log.info("joining the Ray cluster at RAY_ADDRESS=%s", address)
        ray.init(address=address, log_to_driver=True)
        try:
            yield address
        finally:
            ray.shutdown()
        return
    root = Path(root).resolve()
    ensure_auth_token(root)
    bind_to_loopback()
    temp_dir = _temp_dir(root)
    log.info("starting a local Ray cluster on 127.0.0.1 (temp files in %s)", root / "ray")
    with _own_address_exported() as own_address:
        ctx = ray.init(
            address="local",  # start one, whatever RAY_ADDRESS now says
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            _node_ip_address="127.0.0.1",
            _temp_dir=temp_dir,
            include_dashboard=True,  # Train's state queries need it; it listens on 127.0.0.1 only
            dashboard_host="127.0.0.1",
            configure_logging=True,
            logging_level=logging.WARNING,
        )
        try:
            if ctx.address_info["gcs_address"] != own_address:  # Ray ignored RAY_GCS_SERVER_PORT
                raise TrainingError(f"the local Ray cluster runs at {ctx.address_info['gcs_address']}, not at "
                                    f"{own_address} (its RAY_ADDRESS); Ray's state queries would miss it.")
            yield ctx.address_info["address"]
        finally:
            ray.shutdown()
            if Path(temp_dir).is_symlink():  # drop the short link; the files stay under root/ray
                Path(temp_dir).unlink()
                Path(temp_dir).parent.rmdir()


@contextlib.contextmanager
def _own_address_exported() -> Iterator[str]:
    """Export ``RAY_ADDRESS`` (and the GCS port) of the local cluster about to start; restore after.

    Ray's helpers inside the cluster (Ray Train's detached ``PlacementGroupCleaner``, the state API)
    look for "the" cluster through ``RAY_ADDRESS``, else by listing every GCS process on the
    machine, which fails ("Found multiple active Ray instances") while another local run is up.
    The cluster's processes inherit this process's environment when ``ray.init`` starts them, so
    the address must be known before: we choose the GCS port.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"127.0.0.1:{port}"
    saved = {key: os.environ.get(key) for key in ("RAY_ADDRESS", "RAY_GCS_SERVER_PORT")}
    os.environ.update(RAY_ADDRESS=address, RAY_GCS_SERVER_PORT=str(port))
    try:
        yield address
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
