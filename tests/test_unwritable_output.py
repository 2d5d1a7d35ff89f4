"""An unwritable output folder is refused before Ray starts (no cluster may be alive here)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "model_config_cpu_smoke.yaml"


@pytest.mark.parametrize("where", ["output_is_a_file", "parent_is_a_file"])
def test_unwritable_output_is_refused_before_training(tmp_path, capsys, where):
    import ray

    import train

    blocker = tmp_path / "taken"
    blocker.write_text("a file, not a folder")
    output = blocker if where == "output_is_a_file" else blocker / "runs"
    code = train.main(["--config", str(SMOKE), "--output", str(output)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: output folder '{output}' is not writable (")
    assert "choose another --output" in err[0]
    assert blocker.read_text() == "a file, not a folder" and not ray.is_initialized()


def test_unwritable_experiment_folder_is_refused_before_training(tmp_path, capsys):
    import ray

    from ray_jobs.ensemble import main

    blocker = tmp_path / "taken"
    blocker.write_text("x")
    code = main(["--config", str(SMOKE), "--storage", str(blocker), "--name", "ens"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "is not writable" in err[0], err
    assert not ray.is_initialized()
