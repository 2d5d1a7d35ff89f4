"""`make demo`: the main job end to end on the embedded panel, on CPU.

Trains the 5-seed ensemble of configs/model_config_cpu_demo.yaml, then writes the Tune analysis and
the test-split backtest report.  Re-running finishes an interrupted experiment (Tune restore) or,
when it already finished, only re-writes the analysis and the report.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from core.cli import CliParser, run_cli
from core.config import load_config
from ray_jobs import analyze, backtest, ensemble
from ray_jobs.ensemble_model import load_finished

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "model_config_cpu_demo.yaml"


def demo_cpus() -> int:
    """Logical CPUs of the demo's local cluster: two per core, so one seed trains per core.

    A seed holds 1 logical CPU for its Tune trial function (idle while its TorchTrainer runs) plus
    1 for its single-threaded training worker.  With one logical CPU per core, a 2-core machine
    would train one seed at a time (one core idle).  More seeds than cores at once was slower, not
    faster: five demo seeds time-sliced over 2 cores took 48 CPU-seconds per epoch each against 34
    two at a time (memory bandwidth; docs/quality.md), and held ~17 GB.
    """
    return 2 * (os.cpu_count() or 1)


def train_or_finish(config: str, storage: Path, overrides: list[str]) -> Path:
    """Train the config's ensemble under ``storage`` (one seed per core), finish an interrupted one
    (Tune restore), or leave a finished one as it is.  Returns the experiment folder."""
    cfg = load_config(config, overrides)
    experiment = storage / cfg.ensemble.name
    done = load_finished(experiment) if experiment.exists() else {}
    if len(done) == len(cfg.ensemble.seeds):
        print(f"{experiment}: every seed finished; not training again.")
        return experiment
    args = ["--config", config, "--storage", str(storage), "--num-cpus", str(demo_cpus())]
    args += [a for o in overrides for a in ("--set", o)]
    if experiment.exists() and any(experiment.iterdir()):
        args.append("--resume")
    ensemble.run(ensemble.parse_args(args))
    return experiment


def demo(config: str, output: str, overrides: list[str]) -> None:
    """Train (or finish) the ensemble, then write the analysis and the backtest report."""
    start = time.perf_counter()
    experiment = train_or_finish(config, Path(output).resolve(), overrides)
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
