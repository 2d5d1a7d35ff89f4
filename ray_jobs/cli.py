"""Shared entry-point behaviour for ``ray_jobs``: see :mod:`model.cli` (where ``data/`` finds it too)."""

from model.cli import EXIT_ERROR, CliParser, run_cli

__all__ = ["EXIT_ERROR", "CliParser", "run_cli"]
