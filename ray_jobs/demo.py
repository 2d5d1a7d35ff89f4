"""`make demo`: the main job end to end on the embedded panel, on CPU.

Trains the 5-seed ensemble of configs/model_config_cpu_demo.yaml, then writes the Tune analysis and
the test-split backtest report.  Re-running finishes an interrupted experiment (Tune restore) or,
when it already finished, only re-writes the analysis and the report.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from model.config import load_config
from ray_jobs.cli import CliParser, run_cli

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "model_config_cpu_demo.yaml"


def demo_cpus(n_seeds: int) -> int:
    """Logical CPUs of the demo's local cluster: enough to run every seed at once.

    A seed holds 1 logical CPU for its Tune trial function (idle while its TorchTrainer runs) plus
    1 for its single-threaded training worker.  With one logical CPU per core, a 2-core machine
    would train one seed at a time (one core idle); with two per core, seeds would run in rounds of
    two and the last round alone.  All seeds at once, time-sliced over the cores, finish the
    same work soonest (measured: docs/quality.md); each seed's worker holds ~2.5 GB.
    """
    import os

    return max(2 * n_seeds, 2 * (os.cpu_count() or 1))


def demo(config: str, output: str, overrides: list[str]) -> None:
    """Train (or finish) the ensemble, then write the analysis and the backtest report."""
    start = time.perf_counter()
    from ray_jobs import analyze, backtest, ensemble
    from ray_jobs.ensemble_model import load_finished

    cfg = load_config(config, overrides)
    storage = Path(output).resolve()
    experiment = storage / cfg.ensemble.name
    done = load_finished(experiment) if experiment.exists() else {}
    if len(done) < len(cfg.ensemble.seeds):
        ens_args = ["--config", config, "--storage", str(storage), "--num-cpus", str(demo_cpus(len(cfg.ensemble.seeds)))]
        ens_args += [a for o in overrides for a in ("--set", o)]
        if experiment.exists() and any(experiment.iterdir()):
            ens_args.append("--resume")
        ensemble.run(ensemble.parse_args(ens_args))
    else:
        print(f"{experiment} already finished; re-writing the analysis and the report.")
    analyze.analyze(experiment)
    report = backtest.backtest(experiment, experiment / "report")
    print(f"\ndemo finished in {(time.perf_counter() - start) / 60:.1f} min")
    print(f"report:   {report}\nanalysis: {experiment / 'analysis'}")


def main(argv=None) -> int:
    p = CliParser(prog="python -m ray_jobs.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--output", default="runs/demo", help="storage root of the demo experiment")
    p.add_argument("--config", default=str(CONFIG), help="config (default: the CPU demo config)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    return run_cli(lambda: demo(args.config, args.output, args.overrides))


if __name__ == "__main__":
    sys.exit(main())
