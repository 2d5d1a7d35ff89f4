"""Portfolio weights from a trained ensemble.

  python -m ray_jobs.predict --experiment runs/ensembles/NAME --date 2024-06-28 --out weights.parquet
  python -m ray_jobs.predict --experiment runs/ensembles/NAME --split test --out test_weights.parquet
  python -m ray_jobs.predict --runs models/ensemble/model_* --date 2024-06-28 --out weights.parquet

The output is long: one row per (date, factor) with a ``weight`` column; each date's weights sum
to 1.  ``--experiment`` and ``--out`` may be URIs (``s3://BUCKET/...``) as well as local paths.  For a split, rebalances are every ``horizon`` days, each trading from the previous one.
"""

from __future__ import annotations

import sys
from typing import Optional, Sequence

import numpy as np

from core.errors import DataError, PortfolioTrainerError
from core.files import atomic_path
from core.cli import CliParser, run_cli
from core.storage import StoragePath, as_path
from ray_jobs.inference import EnsembleInputs
from ray_jobs.members import add_member_arguments


def predict(experiment: Optional[StoragePath], out: StoragePath, data=None, date=None, split=None, device="cpu", force=False,
            runs: Optional[Sequence[str]] = None):
    """Weights of the ensemble of a Tune ``experiment`` or of ``train.py`` ``runs`` (one of the two)."""
    out = as_path(out)
    if out.exists() and not force:
        raise DataError(f"--out {out} already exists; pass --force to replace it, or choose another path.")
    inputs = EnsembleInputs.load(experiment, data, device, runs=runs)
    if date is not None:
        indices = np.array([inputs.decision_for_date(date)])
    else:
        indices = inputs.split_rebalances(split)
    weights = inputs.ensemble.weights(inputs.windows(indices)).cpu().numpy()  # (K, N)
    sums = weights.sum(axis=1)
    if not np.allclose(sums, 1.0, atol=1e-6):
        bad = int(np.argmax(np.abs(sums - 1.0)))
        raise PortfolioTrainerError(f"weights of {inputs.panel.dates[indices[bad]]} sum to {sums[bad]:.8f}, not 1.")
    frame = inputs.long_frame(indices, weights)
    with atomic_path(out) as tmp:  # never leave a half-written file behind
        frame.to_parquet(tmp, index=False)
    print(f"ensemble of seeds {inputs.ensemble.seeds}: {len(indices)} date(s) x {weights.shape[1]} factors -> {out}")
    if len(indices) == 1:
        top = frame.sort_values("weight", ascending=False).head(5)
        print(f"top weights on {frame['date'].iloc[0]}:\n{top.to_string(index=False)}")
    return frame


def main(argv=None) -> int:
    p = CliParser(prog="python -m ray_jobs.predict", description=__doc__.split("\n\n")[0])
    add_member_arguments(p)
    p.add_argument("--data", default=None, help="Parquet factor panel (default: the one the members were trained on)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--date", help="decision date (the last panel date on or before it is used)")
    which.add_argument("--split", choices=["train", "val", "test"], help="every rebalance of a split")
    p.add_argument("--out", required=True, help="output Parquet (date, factor, weight): a path or a URI")
    p.add_argument("--device", default="cpu", help="device to run the members on (default cpu)")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    args = p.parse_args(argv)
    return run_cli(lambda: predict(
        args.experiment, args.out, args.data, args.date, args.split, args.device, args.force, runs=args.runs
    ))


if __name__ == "__main__":
    sys.exit(main())
