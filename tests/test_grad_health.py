"""``python -m benchmarks.grad_health``: the gradient-norm health check at a config's model shape on CPU."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "model_config_cpu_smoke.yaml"


def test_prints_each_steps_norm_before_clipping(capsys):
    from benchmarks.grad_health import run

    norms = run(str(SMOKE), batch=4, steps=3, seed=7, threads=1, overrides=["training.grad_clip_norm=0.5"])
    out = capsys.readouterr().out
    printed = [float(v) for v in re.findall(r"gradient norm before clipping ([0-9.]+)", out)]
    assert len(norms) == 3 and all(math.isfinite(n) and n > 0 for n in norms)
    assert printed == [round(n, 3) for n in norms]
    assert max(norms) > 0.5  # before clipping: a norm above the clip threshold is reported as it was
    assert "loss scales (gradient norm ~1 per term): loss_return" in out


def test_bad_arguments_exit_2(capsys):
    from benchmarks.grad_health import main

    with pytest.raises(SystemExit) as exc:
        main(["--config", str(SMOKE), "--steps", "0"])
    assert exc.value.code == 2
    assert "need a batch of at least 2 and at least one step" in capsys.readouterr().err
