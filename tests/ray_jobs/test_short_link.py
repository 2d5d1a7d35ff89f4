"""The short link that keeps Ray's socket paths under the Unix limit (no cluster is started)."""

from __future__ import annotations

import os
from pathlib import Path

from ray_jobs import ray_cluster


def test_a_deep_root_gets_a_short_link_that_is_found_and_removed_without_touching_the_files(tmp_path):
    root = tmp_path / ("d" * 40)  # deeper than any socket path allows
    link = Path(ray_cluster._temp_dir(root))
    assert link.is_symlink() and len(str(link)) < len(str(root / "ray"))
    assert Path(os.readlink(link)) == (root / "ray").resolve()
    (link / "session_x").mkdir()  # Ray's files land under root/ray
    other = Path(ray_cluster._temp_dir(tmp_path / ("e" * 40)))

    assert ray_cluster.short_links_into(root) == [link]  # not the other root's link
    ray_cluster.remove_short_link(link)
    assert not link.exists() and not link.parent.exists()
    assert (root / "ray" / "session_x").is_dir()
    assert ray_cluster.short_links_into(root) == []
    ray_cluster.remove_short_link(other)
    assert not other.parent.exists()


def test_a_shallow_root_is_used_as_it_is_and_never_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(ray_cluster, "_MAX_TEMP_DIR_LEN", 10_000)
    temp_dir = ray_cluster._temp_dir(tmp_path)
    assert temp_dir == str((tmp_path / "ray").resolve())
    ray_cluster.remove_short_link(temp_dir)
    assert Path(temp_dir).is_dir()
