"""Sweep training hyperparameters with Ray Tune; retrain the best configuration and evaluate it on test.

    python jobs/tune.py --config configs/tune/demo.yaml [--set tune.num_samples=2 --set train.epochs=1 ...]

Trials are scored on a validation hold-out of the training data (never on test); ASHA stops weak trials.
Writes, in tune.storage/tune.name: results.csv, metric_vs_params.png, best_config.yaml (accepted as is by
jobs/train.py --config) and best_test_metrics.json. Rerunning the same command resumes an interrupted
sweep without rerunning finished trials.
"""

from __future__ import annotations

import argparse
import json

import _bootstrap  # noqa: F401  (xmc from this checkout where it is not installed)

from xmc.cli import run_cli


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="sweep file (configs/tune/*.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="tune.* keys change the sweep, other keys every trial's training config")
    args = parser.parse_args()

    from xmc.tuning.sweep import run_sweep

    summary = run_sweep(args.config, args.overrides)
    print(summary.pop("table"))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    run_cli(main)
