"""Data pipeline: the factor panel contract, the embedded synthetic panel, splits and windows.

``model/`` never imports this package; training code does.  See ``docs/data.md``.
"""

from data.build_panel import FEATURE_NAMES, WARMUP_DAYS, compute_features
from data.panel import Panel, panel_fingerprint, read_panel, write_panel
from data.splits import Splits, make_splits, min_panel_dates, rebalance_indices
from data.synthetic import SyntheticTruth, cache_dir, generate, load_synthetic_panel
from data.windows import Normalizer, PreparedData, WindowSource, horizon_returns, load_panel, prepare

__all__ = [
    "FEATURE_NAMES", "WARMUP_DAYS", "compute_features",
    "Panel", "panel_fingerprint", "read_panel", "write_panel",
    "Splits", "make_splits", "min_panel_dates", "rebalance_indices",
    "SyntheticTruth", "cache_dir", "generate", "load_synthetic_panel",
    "Normalizer", "PreparedData", "WindowSource", "horizon_returns", "load_panel", "prepare",
]
