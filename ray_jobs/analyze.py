"""Tune experiment analysis of an ensemble run: per-seed table and training curves.

  python -m ray_jobs.analyze runs/ensembles/xlstm_cpu_smoke [--out DIR]
  python -m ray_jobs.analyze s3://BUCKET/runs/xlstm_h100_full

Reads the experiment's trials with Tune's ``ExperimentAnalysis`` (no Ray cluster needed) and each
seed's ``metrics.jsonl`` and ``finished.json``, from a local folder or the URI the ensemble was
trained to.  Writes
``seeds.csv``, ``seeds.md`` and ``curves.png`` to --out (default: EXPERIMENT_DIR/analysis; a folder
or a URI).
"""

from __future__ import annotations

import json
import math
import sys

import pandas as pd
from ray.tune import ExperimentAnalysis

from core.errors import CheckpointError
from core.cli import CliParser, run_cli
from core.files import atomic_path, write_text_atomic
from core.storage import StoragePath, as_path, fs_and_path
from ray_jobs.run_folder import FINISHED, SEEDS_DIR, read_history, seed_run_name

CURVES = ("val_sharpe_ratio", "loss_sharpe", "gradient_norm", "val_turnover")


def check_experiment(experiment_dir: StoragePath) -> StoragePath:
    """The resolved experiment folder (or URI); refuses one without Tune's experiment state (before any write)."""
    experiment_dir = as_path(experiment_dir).resolve()
    if not experiment_dir.is_dir():
        raise CheckpointError(
            f"experiment folder {experiment_dir} does not exist; pass STORAGE/NAME of an ensemble run."
        )
    if not any(experiment_dir.glob("experiment_state-*.json")):
        raise CheckpointError(
            f"{experiment_dir} holds no Tune experiment (no experiment_state-*.json); pass STORAGE/NAME of an "
            "ensemble run (python -m ray_jobs.ensemble --storage STORAGE --name NAME)."
        )
    return experiment_dir


def trial_frames(experiment_dir: StoragePath) -> dict[int, pd.DataFrame]:
    """Per-seed DataFrame of every finished epoch, for each trial of the Tune experiment.

    The rows are the seed's own ``metrics.jsonl`` (the same metrics each epoch reports to Tune),
    not Tune's trial records: a trial that ``--resume`` restarts (it errored, or its driver was
    killed) has no Tune checkpoint, and Tune may start its record over with the resumed epochs
    only, while ``metrics.jsonl`` holds every epoch once.
    """
    experiment_dir = check_experiment(experiment_dir)
    fs, path = fs_and_path(experiment_dir)
    frames = {}
    for trial in ExperimentAnalysis(path, storage_filesystem=fs).trials:
        seed = int(trial.config["seed"])
        rows = read_history(experiment_dir / SEEDS_DIR / seed_run_name(seed))
        frames[seed] = pd.DataFrame(rows) if rows else pd.DataFrame(columns=["epoch", *CURVES])
    if not frames:
        raise CheckpointError(f"{experiment_dir} holds no trials.")
    return dict(sorted(frames.items()))


def seed_table(experiment_dir: StoragePath) -> pd.DataFrame:
    """One row per seed: best val_sharpe, its epoch, epochs run, stop reason, best checkpoint."""
    rows = []
    for seed, df in trial_frames(experiment_dir).items():
        run_dir = as_path(experiment_dir).resolve() / SEEDS_DIR / seed_run_name(seed)
        marker = run_dir / FINISHED
        info = json.loads(marker.read_text()) if marker.exists() else {}
        best = df.loc[df["val_sharpe"].idxmax()] if "val_sharpe" in df and len(df) else None
        rows.append({
            "seed": seed,
            "best_val_sharpe": float(best["val_sharpe"]) if best is not None else math.nan,
            "best_epoch": int(best["epoch"]) if best is not None else -1,
            "epochs_run": int(df["epoch"].max()) if "epoch" in df and len(df) else 0,
            "stop_reason": info.get("stop_reason", "did not finish"),
            "best_checkpoint": info.get("best_checkpoint", str(run_dir / "best.pt")),
        })
    return pd.DataFrame(rows)


def to_markdown(df: pd.DataFrame) -> str:
    def fmt(v):
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def plot_curves(frames: dict[int, pd.DataFrame], path: StoragePath) -> None:
    # Deferred: selects the headless backend before pyplot loads, only when a figure is drawn
    # (importing this module must not switch the backend of a caller's own plots).
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7), constrained_layout=True)
    for ax, key in zip(axes.flat, CURVES):
        for seed, df in frames.items():
            if key in df and len(df):
                ax.plot(df["epoch"], df[key], marker="o", ms=3, label=f"seed {seed}")
        ax.set_title(key)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle("Ensemble training curves per seed")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def analyze(experiment_dir: StoragePath, out: StoragePath | None = None) -> pd.DataFrame:
    experiment_dir = check_experiment(experiment_dir)
    out = as_path(out or experiment_dir / "analysis").resolve()
    out.mkdir(parents=True, exist_ok=True)
    table = seed_table(experiment_dir)
    write_text_atomic(out / "seeds.csv", table.to_csv(index=False))
    write_text_atomic(out / "seeds.md", f"# Ensemble {experiment_dir.name}\n\n" + to_markdown(table))
    plot_curves(trial_frames(experiment_dir), out / "curves.png")
    print(table.to_string(index=False))
    print(f"\nwrote {out / 'seeds.csv'}, {out / 'seeds.md'}, {out / 'curves.png'}")
    return table


def main(argv=None) -> int:
    p = CliParser(prog="python -m ray_jobs.analyze", description=__doc__.split("\n\n")[0])
    p.add_argument("experiment_dir", help="the ensemble's experiment folder or URI (STORAGE/NAME)")
    p.add_argument("--out", default=None, help="output folder or URI (default: EXPERIMENT_DIR/analysis)")
    args = p.parse_args(argv)
    return run_cli(lambda: analyze(args.experiment_dir, args.out))


if __name__ == "__main__":
    sys.exit(main())
