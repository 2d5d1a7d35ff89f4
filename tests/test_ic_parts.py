"""benchmarks.ic_parts: the tilt / moving split of an IC and the signal recovery, against pandas."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from benchmarks.ic_parts import ic_parts, recovery, table
from core.errors import ConfigError
from entry_points import ROOT


def _pandas_ic(mu: np.ndarray, realised: np.ndarray) -> float:
    return float(np.mean([pd.Series(m).corr(pd.Series(r), method="spearman") for m, r in zip(mu, realised)]))


def test_ic_parts_split_a_ranking_into_its_fixed_tilt_and_the_rest():
    rng = np.random.default_rng(5)
    k, n = 40, 12
    tilt, moving = rng.normal(size=(1, n)), rng.normal(size=(k, n))
    mu = tilt + moving
    realised = 0.3 * tilt + 0.2 * moving + rng.normal(size=(k, n))
    got = ic_parts(mu, realised)
    fixed = np.repeat(mu.mean(axis=0, keepdims=True), k, axis=0)
    assert got["ic"] == pytest.approx(_pandas_ic(mu, realised), abs=1e-12)
    assert got["tilt"] == pytest.approx(_pandas_ic(fixed, realised), abs=1e-12)
    assert got["moving"] == pytest.approx(_pandas_ic(mu - fixed, realised), abs=1e-12)
    assert got["tilt"] > 0 and got["moving"] > 0


def test_recovery_is_the_rank_correlation_with_the_signal():
    rng = np.random.default_rng(6)
    signal = rng.normal(size=(30, 10)) + rng.normal(size=(1, 10))
    assert recovery(signal, signal) == pytest.approx({"all": 1.0, "moving": 1.0})
    assert recovery(-2 * signal + 1, signal) == pytest.approx({"all": -1.0, "moving": -1.0})
    noisy = signal + rng.normal(size=signal.shape)
    got = recovery(noisy, signal)
    centred = (noisy - noisy.mean(0), signal - signal.mean(0))
    assert got["all"] == pytest.approx(_pandas_ic(noisy, signal), abs=1e-12)
    assert got["moving"] == pytest.approx(_pandas_ic(*centred), abs=1e-12)


def test_a_panel_file_is_refused_it_has_no_truth(tmp_path):
    config = str(ROOT / "configs" / "model_config_cpu_smoke.yaml")
    with pytest.raises(ConfigError, match="needs the synthetic panel"):
        table(config, [f"data.panel_path={tmp_path / 'panel.parquet'}"])
