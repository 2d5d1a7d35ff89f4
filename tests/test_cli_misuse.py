"""Every entry point answers a missing file or an unknown flag with one ``error:`` line and status 2.

No traceback and no usage dump: the shared ``core.cli.CliParser`` turns argparse's errors into one
line, and ``core.cli.run_cli`` does the same for the typed errors.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from entry_points import ENTRY_POINTS, ROOT, entry_main

SMOKE = str(ROOT / "configs" / "model_config_cpu_smoke.yaml")
PROG = {name: "python train.py" if name == "train" else f"python -m {name}" for name in ENTRY_POINTS}


def _missing_file_argv(name: str, tmp) -> tuple[list[str], str]:
    """Arguments naming a file or folder that does not exist, and that path."""
    if name in ("ray_jobs.analyze", "ray_jobs.predict", "ray_jobs.backtest"):
        missing = tmp / "no_experiment"
        outs = {"ray_jobs.analyze": [], "ray_jobs.predict": ["--split", "test", "--out", str(tmp / "w.parquet")],
                "ray_jobs.backtest": ["--out", str(tmp / "report")]}[name]
        experiment = [str(missing)] if name == "ray_jobs.analyze" else ["--experiment", str(missing)]
        return [*experiment, *outs], str(missing)
    if name == "data.build_panel":
        missing = tmp / "returns.csv"
        return ["--returns", str(missing), "--out", str(tmp / "panel.parquet")], str(missing)
    missing = tmp / "config.yaml"
    extra = ["--output", str(tmp / "out")] if name in ("train", "ray_jobs.demo") else []
    if name == "ray_jobs.walkforward":
        extra = ["--folds", "2", "--storage", str(tmp / "out"), "--name", "wf"]
    return ["--config", str(missing), *extra], str(missing)


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), f"stderr is not one error line: {err!r}"
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_missing_file_is_one_line(tmp_path, capsys, name):
    argv, missing = _missing_file_argv(name, tmp_path)
    assert entry_main(name)(argv) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert missing in line
    assert not any(tmp_path.iterdir()), f"{name} wrote {sorted(tmp_path.iterdir())} before refusing"


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_unknown_flag_is_one_line(tmp_path, capsys, name):
    with pytest.raises(SystemExit) as info:
        argv, _ = _missing_file_argv(name, tmp_path)  # parsing refuses --bogus before any file is opened
        entry_main(name)([*argv, "--bogus"])
    assert info.value.code == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line == f"error: unrecognized arguments: --bogus (see {PROG[name]} --help)"


@pytest.mark.parametrize("name", ["data.summary", "ray_jobs.predict"])
def test_missing_required_argument_is_one_line(capsys, name):
    with pytest.raises(SystemExit) as info:
        entry_main(name)([])
    assert info.value.code == 2
    assert "the following arguments are required" in _one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("case", ["train_unknown_flag", "build_panel_missing_returns"])
def test_real_process_prints_one_line_and_no_traceback(tmp_path, case):
    if case == "train_unknown_flag":
        command = ["train.py", "--config", SMOKE, "--bogus"]
    else:  # also proves `python -m data.build_panel` gets no runpy warning
        command = ["-m", "data.build_panel", "--returns", str(tmp_path / "absent.csv"),
                   "--out", str(tmp_path / "p.parquet")]
    done = subprocess.run([sys.executable, *command], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    _one_error_line(done.stderr)
    assert done.stdout == "" and not any(tmp_path.iterdir())
