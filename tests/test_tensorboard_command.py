"""The ``tensorboard --logdir ...`` command that README and train.py print exists and reads our event files."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import ray_jobs.seed_run
from entry_points import entry_main

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "model_config_cpu_smoke.yaml"


def _installed(program: str) -> Path:
    """The console script ``program`` of this interpreter's environment (what ``make demo`` put in .venv/bin)."""
    return Path(sys.executable).parent / program


def test_readme_tensorboard_command_is_installed():
    commands = [line.split("#")[0].strip() for line in (ROOT / "README.md").read_text().splitlines()
                if line.startswith("tensorboard ")]
    assert commands, "README no longer shows a tensorboard command"
    for command in commands:
        program = shlex.split(command)[0]
        assert _installed(program).is_file(), f"README says `{command}` but {_installed(program)} is not installed"


def test_train_prints_a_tensorboard_command_that_reads_its_event_files(tmp_path, monkeypatch, capsys):
    from tensorboardX import SummaryWriter

    def fake_train_one_seed(cfg, seed, output, panel_path=None, num_cpus=None, shared_mount=False):
        with SummaryWriter(str(output / f"seed_{seed}" / "tensorboard")) as writer:
            writer.add_scalar("val_sharpe_ratio", 0.5, 1)
        info = {"best_val_sharpe": 0.5, "best_epoch": 1, "epochs_run": 1, "stop_reason": "max_epochs",
                "best_checkpoint": str(output / f"seed_{seed}" / "best.pt")}
        return info, None

    monkeypatch.setattr(ray_jobs.seed_run, "train_one_seed", fake_train_one_seed)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert entry_main("train")(["--config", str(SMOKE), "--seed", "7", "--output", str(tmp_path)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    match = re.fullmatch(r"TensorBoard:\s+(tensorboard --logdir (\S+))", last)
    assert match, last
    assert Path(match.group(2)) == tmp_path.resolve() / "seed_7" / "tensorboard"
    argv = shlex.split(match.group(1))
    argv[0] = str(_installed(argv[0]))
    done = subprocess.run([*argv, "--inspect"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "val_sharpe_ratio" in done.stdout + done.stderr, done.stdout[-2000:]
