"""`make demo`: the main job end to end on the embedded panel, on CPU.

Trains the 5-seed ensemble of configs/model_config_cpu_demo.yaml, then writes the Tune analysis and
the test-split backtest report.  Re-running finishes an interrupted experiment (Tune restore) or,
when it already finished, only re-writes the analysis and the report.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from model.config import load_config
from model.errors import PortfolioTrainerError

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "model_config_cpu_demo.yaml"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m ray_jobs.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--output", default="runs/demo", help="storage root of the demo experiment")
    p.add_argument("--config", default=str(CONFIG), help="config (default: the CPU demo config)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    start = time.perf_counter()
    try:
        from ray_jobs import analyze, backtest, ensemble
        from ray_jobs.ensemble_model import load_finished

        cfg = load_config(args.config, args.overrides)
        storage = Path(args.output).resolve()
        experiment = storage / cfg.ensemble.name
        done = load_finished(experiment) if experiment.exists() else {}
        if len(done) < len(cfg.ensemble.seeds):
            ens_args = ["--config", args.config, "--storage", str(storage)]
            ens_args += [a for o in args.overrides for a in ("--set", o)]
            if experiment.exists() and any(experiment.iterdir()):
                ens_args.append("--resume")
            ensemble.run(ensemble.parse_args(ens_args))
        else:
            print(f"{experiment} already finished; re-writing the analysis and the report.")
        analyze.analyze(experiment)
        report = experiment / "report"
        if backtest.main(["--experiment", str(experiment), "--out", str(report)]) != 0:
            return 2
    except PortfolioTrainerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"\ndemo finished in {(time.perf_counter() - start) / 60:.1f} min")
    print(f"report:   {report / 'report.md'}\nanalysis: {experiment / 'analysis'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
