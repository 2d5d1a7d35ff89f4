"""benchmarks.ablation follows the config's training options as the Ray loop does (no option is
silently dropped), on the smoke config, one epoch of two steps."""

import json
from pathlib import Path

from benchmarks import ablation

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "model_config_cpu_smoke.yaml"
SHORT = ["--set", "training.max_epochs=1", "--set", "training.steps_per_epoch=2"]


def rows(capsys, *extra: str) -> dict:
    """The one epoch's printed row, less its wall time."""
    assert ablation.main(["--config", str(SMOKE), "--seed", "3", *SHORT, *extra]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{"tag"')]
    assert len(lines) == 1
    lines[0].pop("seconds")
    return lines[0]


def test_the_config_batch_dates_reach_the_harness(capsys):
    random_dates = rows(capsys)
    blocks_in_config = rows(capsys, "--set", "training.batch_dates=blocks")
    blocks_by_flag = rows(capsys, "--batch-dates", "blocks")
    assert blocks_in_config == blocks_by_flag  # one meaning, whichever way it is asked for
    assert blocks_in_config != random_dates  # and it is not the shuffled dates' run


def test_a_flag_that_contradicts_the_config_is_refused(capsys):
    code = ablation.main(["--config", str(SMOKE), *SHORT, "--set", "training.batch_dates=blocks",
                          "--batch-dates", "random"])
    assert code != 0
    assert "--batch-dates random contradicts training.batch_dates = blocks" in capsys.readouterr().err
