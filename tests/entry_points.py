"""Every command-line entry point's ``main(argv)``, by the name it is run with."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

ENTRY_POINTS = (
    "train", "ray_jobs.ensemble", "ray_jobs.walkforward", "ray_jobs.analyze", "ray_jobs.predict", "ray_jobs.backtest",
    "ray_jobs.demo", "data.build_panel", "data.oracle", "data.summary", "benchmarks.quality",
    "benchmarks.model_cost", "benchmarks.ablation", "benchmarks.ic_parts",
)
"""``train`` is ``python train.py``; the others are ``python -m NAME``."""


def entry_main(name: str):
    """The ``main`` function of an entry point (``train.py`` is loaded from its file: it is no package)."""
    if name != "train":
        return importlib.import_module(name).main
    spec = importlib.util.spec_from_file_location("train", ROOT / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main
