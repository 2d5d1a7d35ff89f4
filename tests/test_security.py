"""Security promises: no credentials in the repository, YAML read with ``safe_load`` only, and the
local Ray cluster (with its dashboard) bound to 127.0.0.1.  ``cluster.yaml``: tests/test_cluster_yaml.py.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CREDENTIALS = {
    "AWS access key id": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "private key block": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY(?: BLOCK)?-----"),
    "AWS secret access key": re.compile(r"aws_secret_access_key\s*[=:]\s*\S", re.IGNORECASE),
    "GitHub token": re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})"),
    "Slack token": re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"),
    "Hugging Face token": re.compile(r"\bhf_[A-Za-z0-9]{34,}"),
    "sk- API key": re.compile(r"\bsk-[A-Za-z0-9_-]{32,}"),
    "Google API key": re.compile(r"\bAIza[0-9A-Za-z_-]{35}"),
    "Ray auth token value": re.compile(r"RAY_AUTH_TOKEN\s*=\s*['\"]?[0-9a-f]{32,}"),
    "hard-coded password or secret": re.compile(r"(?i)\b(?:password|passwd|secret)\s*[=:]\s*['\"][^'\"\s]{8,}['\"]"),
}
SECRET_FILE = re.compile(r"(?:^|/)(?:\.env|id_rsa|id_ed25519|[^/]*\.pem|[^/]*\.key|credentials|ray_auth_token)$")
UNSAFE_YAML = re.compile(
    r"yaml\.(?:load|load_all|full_load|full_load_all|unsafe_load|unsafe_load_all)\s*\("
    r"|\bLoader\s*="
    r"|\b(?:Unsafe|Full)Loader\b"
    r"|from\s+yaml\s+import\s+[^\n]*\b(?:load|load_all|full_load|unsafe_load)\b"
)


def repo_files() -> list[Path]:
    """The files git tracks plus the untracked ones it does not ignore (what a commit would hold)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.decode().split("\0")
    return [ROOT / name for name in listed if name and (ROOT / name).is_file()]  # (moved files stay in the index)


def scan(files, patterns: dict[str, re.Pattern]) -> list[str]:
    """``path:line: what`` for every match in the text files (files with a NUL byte are binary)."""
    hits = []
    for path in files:
        data = path.read_bytes()
        if b"\0" in data:
            continue
        for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
            hits += [f"{path}:{number}: {what}" for what, rx in patterns.items() if rx.search(line)]
    return hits


def test_no_credentials_in_the_repository():
    files = repo_files()
    assert len(files) > 50 and ROOT / "cluster.yaml" in files
    assert scan(files, CREDENTIALS) == []
    assert [str(p.relative_to(ROOT)) for p in files if SECRET_FILE.search(p.relative_to(ROOT).as_posix())] == []


def test_credential_scan_finds_planted_secrets(tmp_path):
    planted = tmp_path / "leak.txt"  # each secret is assembled here, so this file holds none
    planted.write_text("\n".join([
        "key = " + "AKIA" + "ABCDEFGHIJKLMNOP",
        "-----BEGIN " + "RSA PRIVATE KEY-----",
        "aws_secret_access_key" + " = wJalrXUtnFEMI/K7MDENG",
        "token: " + "ghp_" + "a1" * 18,
        "RAY_AUTH_TOKEN" + "=" + "0f" * 32,
    ]))
    found = {hit.rsplit(": ", 1)[1] for hit in scan([planted], CREDENTIALS)}
    assert found == {"AWS access key id", "private key block", "AWS secret access key", "GitHub token",
                     "Ray auth token value"}


def test_yaml_is_read_with_safe_load_only():
    sources = [p for p in repo_files() if p.suffix == ".py"]
    assert ROOT / "core" / "config.py" in sources and "yaml.safe_load(" in (ROOT / "core" / "config.py").read_text()
    assert scan(sources, {"unsafe YAML loading (use yaml.safe_load)": UNSAFE_YAML}) == []


# Joined at run time, so that this file holds none of them.
UNSAFE_SAMPLES = [
    ("cfg = yaml.", "load(text)"), ("yaml.", "unsafe_load(s)"), ("docs = yaml.", "full_load_all(s)"),
    ("cfg = yaml.safe_load(s, Lo", "ader=yaml.SafeLoader)"), ("from yaml imp", "ort load, dump"),
]


@pytest.mark.parametrize("parts", UNSAFE_SAMPLES, ids=lambda parts: "".join(parts))
def test_unsafe_yaml_pattern_catches(parts):
    assert UNSAFE_YAML.search("".join(parts))


def test_safe_yaml_passes_the_pattern():
    safe = ("cfg = yaml.safe_load(text)", "yaml.safe_load_all(s)", "from yaml import safe_load", "yaml.safe_dump(d)")
    assert [line for line in safe if UNSAFE_YAML.search(line)] == []


def test_local_ray_binds_to_loopback(tmp_path, monkeypatch):
    """``ray_session`` without RAY_ADDRESS starts Ray on 127.0.0.1, dashboard included.

    ``ray.init`` is stopped at the call (no cluster starts here); the live clusters of tests/ray_jobs
    run through the same function.
    """
    import ray
    from ray._private import ray_constants

    import ray_jobs.ray_cluster as ray_cluster

    class Stop(Exception):
        pass

    seen = {}

    def init(**kwargs):
        seen.update(kwargs)
        raise Stop

    assert not ray.is_initialized()
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "1")
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", True)
    monkeypatch.setattr(ray_cluster, "ensure_auth_token", lambda root: None)  # Ray caches the first token it reads
    monkeypatch.setattr(ray, "init", init)
    with pytest.raises(Stop), ray_cluster.ray_session(tmp_path):
        pass
    link = Path(seen["_temp_dir"])
    if link.is_symlink():  # the short temp-dir link ray_session would remove after ray.shutdown()
        link.unlink()
        link.parent.rmdir()
    assert seen["_node_ip_address"] == "127.0.0.1" and seen["dashboard_host"] == "127.0.0.1"
    # Ray's single-machine mode: without it, Ray on Linux replaces 127.0.0.1 with the routable IP.
    assert os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0" and ray_constants.ENABLE_RAY_CLUSTER is False
