"""What every entry point shares: one ``error: ...`` line on stderr and exit status 2, no traceback.

Lives in ``model/`` (next to the errors) so that ``data/`` and ``ray_jobs/`` can both use it
without ``data`` importing ``ray_jobs``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, NoReturn

from core.errors import PortfolioTrainerError

EXIT_ERROR = 2
"""Exit status of a refused command line or a typed error (argparse's own usage-error status)."""


class CliParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose usage errors are one line, without the usage dump.

    ``python train.py --bogus`` prints
    ``error: unrecognized arguments: --bogus (see python train.py --help)`` and exits with 2.
    """

    def error(self, message: str) -> NoReturn:
        one_line = " ".join(message.split())
        self.exit(EXIT_ERROR, f"error: {one_line} (see {self.prog} --help)\n")


def config_parser(prog: str, description: str) -> CliParser:
    """A parser with the ``--config``, ``--data`` and ``--set`` arguments of the data commands."""
    parser = CliParser(prog=prog, description=description)
    parser.add_argument("--config", required=True, help="YAML config (configs/*.yaml)")
    parser.add_argument("--data", default=None, help="panel Parquet (default: data.panel_path, else synthetic)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    return parser


def run_cli(action: Callable[[], object]) -> int:
    """Run ``action``; a PortfolioTrainerError prints its message (no traceback) and returns 2."""
    try:
        action()
    except PortfolioTrainerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    return 0
