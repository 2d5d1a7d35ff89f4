"""Storage locations: local paths stay Paths; URIs become RemotePaths that read and write an
S3-compatible server (moto on 127.0.0.1) atomically, and checkpoints load from them weights-only."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import pytest

from core.errors import CheckpointError, ConfigError
from core.files import atomic_path, copy_atomic, write_text_atomic
from core.storage import RemotePath, as_path, fs_and_path
from s3_helpers import bucket_files, s3_bucket


@pytest.fixture(scope="module")
def bucket(tmp_path_factory):
    """``s3://runs-bucket/<test>?endpoint_override=...``: a fresh folder per test in one server."""
    with s3_bucket(tmp_path_factory.mktemp("s3")) as query:
        yield query


@pytest.fixture
def root(bucket, request) -> RemotePath:
    return as_path(f"s3://runs-bucket/{request.node.name}?{bucket}")


def test_plain_paths_and_file_uris_stay_local(tmp_path):
    assert as_path("runs/ens") == Path("runs/ens")
    assert as_path(f"file://{tmp_path}") == tmp_path
    assert fs_and_path(tmp_path) == (None, str(tmp_path.resolve()))


def test_a_uri_names_itself_with_its_query_and_survives_pickling(root, bucket):
    child = root / "seeds" / "seed_3"
    assert str(child) == f"s3://runs-bucket/{root.name}/seeds/seed_3?{bucket}"
    assert (child.name, child.parent.name, child.parent.parent) == ("seed_3", "seeds", root)
    assert as_path(str(child)) == child  # a printed location can be passed back
    assert pickle.loads(pickle.dumps(child)) == child
    fs, path = fs_and_path(child)
    assert path == f"runs-bucket/{root.name}/seeds/seed_3" and fs.type_name == "s3"


@pytest.mark.parametrize("uri, match", [
    ("s3://b/runs?secret_key=abc", r"carries secret_key.*instance role"),
    ("nosuchfs://b/runs", r"cannot be opened.*s3://BUCKET/PATH"),
])
def test_bad_uris_are_refused_with_the_fix(uri, match):
    with pytest.raises(ConfigError, match=match):
        as_path(uri)


def test_reads_writes_listing_and_copies_on_the_bucket(root):
    assert not root.exists() and list(root.iterdir()) == []
    write_text_atomic(root / "seed_1" / "metrics.jsonl", '{"epoch": 1}\n')
    write_text_atomic(root / "seed_1" / "checkpoint_2" / "checkpoint.pt", "b")
    write_text_atomic(root / "seed_1" / "checkpoint_1" / "checkpoint.pt", "a")
    write_text_atomic(root / "seed_2" / "metrics.jsonl", "")
    run = root / "seed_1"
    assert root.is_dir() and run.is_dir() and (run / "metrics.jsonl").is_file()
    assert json.loads((run / "metrics.jsonl").read_text()) == {"epoch": 1}
    assert [p.name for p in root.glob("seed_*")] == ["seed_1", "seed_2"]
    assert [str(p.parent.name) for p in run.glob("checkpoint_*/checkpoint.pt")] == ["checkpoint_1", "checkpoint_2"]
    copy_atomic(run / "checkpoint_2" / "checkpoint.pt", run / "best.pt")  # server-side copy
    assert (run / "best.pt").read_bytes() == b"b" and (run / "best.pt").stat().st_size == 1
    (run / "best.pt").unlink()
    assert not (run / "best.pt").exists()
    assert sorted(bucket_files(str(root))) == ["seed_1/checkpoint_1/checkpoint.pt", "seed_1/checkpoint_2/checkpoint.pt",
                                               "seed_1/metrics.jsonl", "seed_2/metrics.jsonl"]


def test_a_failed_write_leaves_the_old_object(root):
    target = root / "finished.json"
    write_text_atomic(target, "old")
    with pytest.raises(RuntimeError, match="crash mid-write"):
        with atomic_path(target) as tmp:
            tmp.write_text("half of the new cont")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "old" and list(root.iterdir()) == [target]
    assert not tmp.parent.exists()  # the local scratch copy is gone too


def test_checkpoints_round_trip_through_the_bucket_weights_only(root, tmp_path):
    from core.config import load_config
    from model.checkpoint import copy_checkpoint, load_checkpoint, load_model, save_checkpoint
    from model.network import XLSTMPortfolio

    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "model_config_cpu_smoke.yaml")
    model = XLSTMPortfolio.from_config(cfg)
    latest = save_checkpoint(root / "latest.pt", model, cfg, epoch=2)
    local = copy_checkpoint(latest, tmp_path / "latest.pt")  # download
    assert local.read_bytes() == latest.read_bytes() and load_checkpoint(latest)["epoch"] == 2
    loaded, _ = load_model(latest)
    for key, value in model.state_dict().items():
        assert loaded.state_dict()[key].equal(value), key
    write_text_atomic(root / "broken.pt", "not a checkpoint")
    with pytest.raises(CheckpointError, match="^" + re.escape(f"{root / 'broken.pt'} is corrupt")):  # by its URI
        load_checkpoint(root / "broken.pt")
