"""Shared entry-point behaviour for ``ray_jobs``: see :mod:`core.cli` (where ``data/`` finds it too)."""

from core.cli import EXIT_ERROR, CliParser, run_cli

__all__ = ["EXIT_ERROR", "CliParser", "run_cli"]
