"""Shared entry-point behaviour: typed errors become one `error: ...` line and exit status 2."""

from __future__ import annotations

import sys
from typing import Callable

from model.errors import PortfolioTrainerError

EXIT_ERROR = 2


def run_cli(action: Callable[[], object]) -> int:
    """Run ``action``; a PortfolioTrainerError prints its message (no traceback) and returns 2."""
    try:
        action()
    except PortfolioTrainerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    return 0
