"""Data pipeline: the factor panel contract, the embedded synthetic panel, splits and windows.

``model/`` never imports this package; training code does.  See ``docs/data.md``.

The names below are imported on first use (PEP 562): importing the package eagerly would load
``data.build_panel`` before ``python -m data.build_panel`` runs it, and runpy then warns on stderr.
"""

from __future__ import annotations

import importlib

_SOURCES = {
    "data.build_panel": ("FEATURE_NAMES", "WARMUP_DAYS", "compute_features"),
    "data.panel": ("Panel", "panel_fingerprint", "read_panel", "write_panel"),
    "data.splits": ("Splits", "make_splits", "min_panel_dates", "rebalance_indices"),
    "data.synthetic": ("SyntheticTruth", "cache_dir", "generate", "load_synthetic_panel"),
    "data.windows": ("Normalizer", "PreparedData", "WindowSource", "horizon_returns", "load_panel", "prepare"),
}
_MODULE_OF = {name: module for module, names in _SOURCES.items() for name in names}

__all__ = list(_MODULE_OF)


def __getattr__(name: str):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'data' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
