"""Start or join a Ray cluster, keeping Ray's files inside the run's own directory.

* ``RAY_ADDRESS`` set: join that cluster (``ray job submit`` sets it for the job's driver).
* otherwise: start a local cluster bound to 127.0.0.1 with its temp files under ``root/ray``,
  on a GCS port chosen here and exported as ``RAY_ADDRESS`` to the cluster's processes (below).

Token authentication stays on for local clusters, but the token lives in ``root/ray_auth_token``
(not ``~/.ray``): we export ``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN_PATH`` so the cluster
and every worker agree (the auth-mode trap in docs/training.md).

Storage: Ray keeps its checkpoints where the run folder is (:func:`ray_storage`), and a cluster of
more than one node must have that folder on shared storage (:func:`check_shared_storage`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import tempfile
import uuid
from pathlib import Path
from typing import Iterator, Optional

import ray
from ray._private import ray_constants
from ray._raylet import Config as RayConfig
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from core.errors import ConfigError, TrainingError
from core.files import write_text_atomic
from core.storage import RemotePath, StoragePath, as_path, fs_and_path

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


_SHORT_LINK_PREFIX = "xlp_"


def _temp_dir(root: Path) -> str:
    """Ray's temp dir under ``root``; a short symlinked path when ``root`` is too deep.

    The caller removes the link with :func:`remove_short_link` when its cluster has stopped."""
    target = (root / "ray").resolve()
    target.mkdir(parents=True, exist_ok=True)
    if len(str(target)) <= _MAX_TEMP_DIR_LEN:
        return str(target)
    # Socket paths would be too long: point a short link in the system temp dir at our folder.
    link = Path(tempfile.mkdtemp(prefix=_SHORT_LINK_PREFIX)) / "r"
    link.symlink_to(target, target_is_directory=True)
    return str(link)


def remove_short_link(temp_dir: StoragePath) -> None:
    """Remove the short link (and its folder) that :func:`_temp_dir` made; the files it pointed at
    stay under ``root/ray``.  Nothing happens when ``temp_dir`` is the folder itself."""
    link = Path(temp_dir)
    if link.is_symlink():
        link.unlink()
        link.parent.rmdir()


def short_links_into(folder: Path) -> list[Path]:
    """The short links of :func:`_temp_dir` that point into ``folder``, e.g. those a driver killed
    with SIGKILL left behind (a driver that stops removes its own)."""
    folder = folder.resolve()
    return [link for link in sorted(Path(tempfile.gettempdir()).glob(f"{_SHORT_LINK_PREFIX}*/r"))
            if link.is_symlink() and Path(os.readlink(link)).is_relative_to(folder)]


@contextlib.contextmanager
def ray_session(root: StoragePath, num_cpus: Optional[int] = None, num_gpus: Optional[int] = None) -> Iterator[str]:
    """Yield the address of a running Ray cluster; stop it afterwards if we started it.

    A local cluster keeps its temp files and auth token under ``root``; when ``root`` is a URI
    (the run writes to an object store), under a new local folder in the system temp dir.
    """
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
    root = Path(tempfile.mkdtemp(prefix="xlstm_ray_")) if isinstance(as_path(root), RemotePath) else Path(root).resolve()
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
            remove_short_link(temp_dir)


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


def ray_storage(storage: StoragePath) -> dict:
    """``RunConfig`` arguments that put Ray's own files (Train's checkpoints, Tune's experiment
    state) in ``storage``: a local folder, or the file system and path of a URI."""
    fs, path = fs_and_path(storage)
    return {"storage_path": path, "storage_filesystem": fs}


def check_shared_storage(storage: StoragePath, shared_mount: bool, flag: str = "--storage") -> None:
    """Refuse a local storage folder on a cluster of more than one node, before anything trains.

    Each node would write its seeds' run folders to its own disk, and resuming, ``analyze``,
    ``predict`` and ``backtest`` would find only what the driver's node holds.  ``shared_mount``
    (``--shared-mount``) declares the folder a mount every node shares (EFS, NFS); that is checked:
    a file written here must be visible on every node.
    """
    if isinstance(as_path(storage), RemotePath):
        return
    nodes = [n for n in ray.nodes() if n["Alive"]]
    if len(nodes) <= 1:
        return
    if not shared_mount:
        raise ConfigError(
            f"{flag} {storage} is a local folder, but the Ray cluster has {len(nodes)} nodes: each node would keep "
            f"its seeds' files on its own disk, out of reach of --resume, analyze and predict. Pass {flag} "
            "s3://BUCKET/PATH (or another pyarrow file system URI), or a folder on a mount every node shares "
            "(EFS, NFS) together with --shared-mount."
        )
    _check_mount_is_shared(Path(storage), nodes, flag)


@ray.remote(num_cpus=0)
def _sees(path: str) -> bool:
    return os.path.exists(path)


def _check_mount_is_shared(folder: Path, nodes: list[dict], flag: str) -> None:
    marker = folder / f".shared_check_{uuid.uuid4().hex[:8]}"
    write_text_atomic(marker, "")
    try:
        seen = ray.get([
            _sees.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(str(marker))
            for n in nodes
        ], timeout=120)
    finally:
        marker.unlink()
    blind = [n["NodeManagerAddress"] for n, ok in zip(nodes, seen) if not ok]
    if blind:
        raise ConfigError(
            f"{flag} {folder} --shared-mount: the node(s) {blind} do not see a file written there from this node, "
            "so the folder is not shared. Mount the same file system at the same path on every node (cluster.yaml's "
            "setup_commands), or pass s3://BUCKET/PATH."
        )
