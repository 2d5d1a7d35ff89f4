"""What a Tune trial pays before and around its epochs, side by side in one run (no model).

  python -m benchmarks.trial_startup [--trials 4] [--epochs 5]

Two comparisons on a local cluster, each arm the same work, alternating:

* **dataset hand-off** (one TorchTrainer, 1 worker, ``--epochs`` epochs of 10 batches of 64
  indices from a 4,000-row dataset): Ray Train's default streaming split against
  ``DataConfig(datasets_to_split=[])``, which :func:`ray_jobs.seed_run.build_trainer` uses for one
  worker.  Printed: seconds from ``fit()`` to the train function, the wait for each epoch's first
  batch, and the whole ``fit()``.
* **trial processes** (a Tune grid of ``--trials`` trials, one at a time, each fitting such a
  TorchTrainer): ``reuse_actors`` off against on (``ray_jobs.ensemble.grid_tuner``).  Printed:
  the wall time of ``Tuner.fit()`` per trial.

The model's own start-up (imports, loss-scale calibration) is not here: it is the same in every arm.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from core.cli import CliParser, run_cli

ROWS, BATCH, STEPS = 4000, 64, 10


def _loop(config: dict) -> None:
    """Train-function stand-in: the epochs' batches of indices, timing each epoch's first one."""
    import ray.train

    entered = time.time()
    shard = ray.train.get_dataset_shard("train")
    waits, seen = [], []
    for epoch in range(config["epochs"]):
        start = time.time()
        for i, batch in enumerate(shard.iter_torch_batches(batch_size=BATCH, drop_last=True,
                                                           local_shuffle_buffer_size=ROWS, local_shuffle_seed=epoch)):
            if i == 0:
                waits.append(time.time() - start)
            seen.append(batch["t"].tolist())
            if i + 1 >= STEPS:
                break
    Path(config["out"]).write_text(json.dumps({"entered": entered, "waits": waits, "batches": seen}))


def _trainer(root: Path, name: str, epochs: int, split: bool):
    import ray.data
    import ray.train
    from ray.train.torch import TorchTrainer

    dataset = ray.data.from_items([{"t": i} for i in range(ROWS)]).randomize_block_order(seed=0)
    return TorchTrainer(
        _loop, train_loop_config={"out": str(root / f"{name}.json"), "epochs": epochs},
        scaling_config=ray.train.ScalingConfig(num_workers=1), datasets={"train": dataset},
        dataset_config=ray.train.DataConfig(datasets_to_split="all" if split else []),
        run_config=ray.train.RunConfig(storage_path=str(root / "store"), name=name),
    )


def hand_off(root: Path, epochs: int, rounds: int) -> tuple[dict, bool]:
    """Timings per arm, and whether both arms gave the worker the same batches in every round."""
    rows = {"streaming split": [], "no split (one worker)": []}
    same = True
    for r in range(rounds):
        batches = []
        for arm, split in (("streaming split", True), ("no split (one worker)", False)):
            name = f"{'split' if split else 'nosplit'}_{r}"
            start = time.time()
            _trainer(root, name, epochs, split).fit()
            total = time.time() - start
            seen = json.loads((root / f"{name}.json").read_text())
            batches.append(seen["batches"])
            rows[arm].append({"to_train_fn": seen["entered"] - start, "first_wait": seen["waits"][0],
                              "later_waits": statistics.mean(seen["waits"][1:]), "fit": total})
        same = same and batches[0] == batches[1]
    return rows, same


def trial_processes(root: Path, trials: int, epochs: int) -> dict:
    from ray import tune

    def trial(config: dict) -> None:
        _trainer(root, f"trial_{config['reuse']}_{config['i']}", epochs, split=False).fit()

    out = {}
    for reuse in (False, True):
        tuner = tune.Tuner(
            tune.with_resources(trial, {"CPU": 0.01}),
            param_space={"i": tune.grid_search(list(range(trials))), "reuse": reuse},
            tune_config=tune.TuneConfig(max_concurrent_trials=1, reuse_actors=reuse),
            run_config=tune.RunConfig(name=f"reuse_{reuse}", storage_path=str(root / "tune"), verbose=0),
        )
        start = time.time()
        tuner.fit()
        out[f"reuse_actors={reuse}"] = (time.time() - start) / trials
    return out


def run(args) -> None:
    import ray
    import ray.cloudpickle

    from ray_jobs import ray_cluster

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    root = Path(tempfile.mkdtemp(prefix="trial_startup_"))
    with ray_cluster.ray_session(root, num_cpus=4):
        handed, same = hand_off(root, args.epochs, args.rounds)
        reused = trial_processes(root, args.trials, args.epochs)
    print(f"dataset hand-off: 1 worker, {args.epochs} epochs of {STEPS} batches of {BATCH}; "
          f"median of {args.rounds} alternating rounds, seconds")
    print(f"{'arm':<24}{'fit() -> train fn':>18}{'1st batch, epoch 1':>20}{'1st batch, later':>18}{'whole fit()':>13}")
    med = {arm: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for arm, rs in handed.items()}
    for arm, m in med.items():
        print(f"{arm:<24}{m['to_train_fn']:>18.2f}{m['first_wait']:>20.2f}{m['later_waits']:>18.2f}{m['fit']:>13.2f}")
    a, b = med["streaming split"]["fit"], med["no split (one worker)"]["fit"]
    print(f"whole fit(): {a - b:+.2f} s per trial with the split ({a / b:.2f}x); "
          f"the same batches in both arms, every epoch of every round: {same}")
    print(f"\ntrial processes: {args.trials} trials one at a time, wall seconds per trial")
    for arm, sec in reused.items():
        print(f"{arm:<24}{sec:>8.2f}")
    off, on = reused["reuse_actors=False"], reused["reuse_actors=True"]
    print(f"reuse_actors saves {off - on:.2f} s per trial ({off / on:.2f}x)")


def main(argv=None) -> int:
    p = CliParser(prog="python -m benchmarks.trial_startup", description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=4, help="trials per arm of the reuse comparison (default 4)")
    p.add_argument("--epochs", type=int, default=5, help="epochs per trainer (default 5)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds of the hand-off comparison (default 3)")
    args = p.parse_args(argv)
    return run_cli(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
