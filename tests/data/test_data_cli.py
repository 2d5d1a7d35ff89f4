"""Entry points: summary and oracle CLIs run on a real Parquet panel and fail loudly on a bad one."""

from __future__ import annotations

import subprocess
import sys

from panel_helpers import REPO, SMALL_OVERRIDES, SMOKE
from data import oracle, summary


def _small_args(panel_path) -> list[str]:
    args = ["--config", str(SMOKE), "--data", str(panel_path)]
    for item in SMALL_OVERRIDES:
        args += ["--set", item]
    return args


def test_summary_cli(panel_file, capsys):
    assert summary.main(_small_args(panel_file)) == 0
    out = capsys.readouterr().out
    assert "T = 169" in out and "N = 6" in out and "F = 9" in out
    assert out.count("decisions") == 3 and "fingerprint" in out


def test_summary_cli_refuses_a_bad_panel(tmp_path, capsys):
    assert summary.main(_small_args(tmp_path / "missing.parquet")) == 2
    assert "does not exist" in capsys.readouterr().err


def test_oracle_cli_on_a_file_has_no_oracle_row(panel_file, capsys):
    assert oracle.main(_small_args(panel_file)) == 0
    out = capsys.readouterr().out
    assert "probe SR" in out and "1/N SR" in out and "oracle SR" not in out
    assert all(name in out for name in ("train", "val", "test"))


def test_module_entry_points_have_help():
    for module in ("data", "data.oracle", "data.summary"):
        done = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True, text=True)
        assert done.returncode == 0 and "--config" in done.stdout, module
