"""Which best checkpoints make an ensemble: a Tune experiment's seeds, or ``train.py`` run folders.

* ``--experiment STORAGE/NAME`` (``python -m ray_jobs.ensemble``): every ``seeds/seed_<N>/best.pt``;
  STORAGE may be a URI (``s3://BUCKET/runs``), as given to the ensemble's ``--storage``.
* ``--runs FOLDER ...`` (``python train.py --seed N --output FOLDER`` once per seed): each FOLDER is a
  ``train.py --output`` folder (its ``seed_<N>/best.pt``) or a ``seed_<N>`` run folder itself.  A
  pattern such as ``models/ensemble/model_*`` is expanded here too, when the shell left it as is;
  a URI (``--output s3://...``) is taken as it is, without patterns.
"""

from __future__ import annotations

import glob
import re
from pathlib import Path
from typing import Optional, Sequence

from core.errors import CheckpointError, ConfigError
from core.storage import StoragePath, as_path, is_uri
from ray_jobs.run_folder import BEST, SEEDS_DIR

_RUN_NAME = re.compile(r"seed_(-?\d+)")


def best_checkpoints(experiment_dir: StoragePath) -> dict[int, StoragePath]:
    """seed -> best.pt of every seed run in a Tune experiment (by its own best val_sharpe)."""
    seeds_dir = as_path(experiment_dir).resolve() / SEEDS_DIR
    found = {}
    for run_dir in sorted(seeds_dir.glob("seed_*")):
        best = run_dir / BEST
        if best.exists():
            found[int(run_dir.name.split("_", 1)[1])] = best
    if not found:
        raise CheckpointError(
            f"no {BEST} under {seeds_dir}/seed_*: is {experiment_dir} an ensemble experiment "
            "(python -m ray_jobs.ensemble --storage ... --name ...)? For train.py runs use --runs."
        )
    return dict(sorted(found.items()))


def expand_runs(runs: Sequence[str | StoragePath]) -> list[StoragePath]:
    """The run folders named by ``runs``, local patterns (``*``, ``?``, ``[``) expanded, in sorted order."""
    if not runs:
        raise ConfigError("--runs needs at least one train.py run folder, e.g. --runs models/ensemble/model_*.")
    folders: list[StoragePath] = []
    for run in map(str, runs):
        if is_uri(run):  # its query ("?endpoint_override=...") is no pattern
            folders.append(as_path(run))
        elif glob.has_magic(run) and not Path(run).exists():
            matched = sorted(glob.glob(run))
            if not matched:
                raise ConfigError(f"--runs {run!r} matches no folder; pass train.py --output folders, "
                                  "e.g. --runs models/ensemble/model_*.")
            folders += [Path(m) for m in matched]
        else:
            folders.append(Path(run))
    return folders


def _seed_runs(folder: StoragePath) -> list[StoragePath]:
    """The ``seed_<N>`` run folders of one ``--runs`` entry (the entry itself, or those inside it)."""
    if not folder.is_dir():
        raise CheckpointError(f"--runs {folder}: no such folder; pass a train.py --output folder.")
    inside = sorted(p for p in folder.iterdir() if p.is_dir() and _RUN_NAME.fullmatch(p.name))
    if inside:
        return inside
    if _RUN_NAME.fullmatch(folder.name):
        return [folder]
    raise CheckpointError(f"--runs {folder}: no seed_<N> run folder in it; is it the --output of python train.py?")


def run_checkpoints(runs: Sequence[str | StoragePath]) -> dict[int, StoragePath]:
    """seed -> best.pt of each ``train.py`` run; one seed once, every run finished with a best.pt."""
    found: dict[int, StoragePath] = {}
    for folder in expand_runs(runs):
        for run_dir in _seed_runs(folder.resolve()):
            best = run_dir / BEST
            if not best.is_file():
                raise CheckpointError(
                    f"{run_dir} has no {BEST}: the run has not finished an epoch (or failed); "
                    f"finish it (python train.py ... --output {run_dir.parent}) or leave it out of --runs."
                )
            seed = int(_RUN_NAME.fullmatch(run_dir.name).group(1))
            if seed in found:
                raise CheckpointError(f"seed {seed} is in two runs ({found[seed].parent} and {run_dir}): "
                                      "an ensemble takes each seed once.")
            found[seed] = best
    return dict(sorted(found.items()))


def member_checkpoints(experiment: Optional[StoragePath] = None,
                       runs: Optional[Sequence[str | Path]] = None) -> dict[int, StoragePath]:
    """seed -> best.pt from exactly one of a Tune ``experiment`` folder or ``train.py`` ``runs``."""
    if (experiment is None) == (runs is None):
        raise ConfigError("name the ensemble's members by --experiment STORAGE/NAME or by --runs FOLDER ..., "
                          "not both nor neither.")
    return best_checkpoints(experiment) if experiment is not None else run_checkpoints(runs)


def config_differences(first: dict, other: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two stored configs (nested dicts)."""
    keys = sorted(set(first) | set(other))
    out = []
    for key in keys:
        a, b = first.get(key), other.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key} ({a!r} vs {b!r})")
    return out


def add_member_arguments(parser) -> None:
    """``--experiment STORAGE/NAME`` or ``--runs FOLDER ...`` (exactly one) on a command line."""
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--experiment", type=as_path,
                       help="ensemble experiment folder or URI (STORAGE/NAME of python -m ray_jobs.ensemble)")
    which.add_argument("--runs", nargs="+", metavar="FOLDER",
                       help="train.py --output folders (or their seed_<N> folders), e.g. --runs models/ensemble/model_*")


def members_label(experiment: Optional[StoragePath], runs: Optional[Sequence[str | Path]]) -> str:
    """How a report names the ensemble: the experiment's name, or its run folders."""
    if experiment is not None:
        return as_path(experiment).name
    return "train.py runs " + ", ".join(as_path(run).name for run in runs)
