"""Train a dual encoder + per-label classifier on Ray Train (UniDEC-style by default).

    python jobs/train.py --config configs/demo.yaml [--set train.epochs=2 --set train.num_workers=2 ...]
    python jobs/train.py --config configs/datasets/reuters-21578.yaml --config configs/methods/prime.yaml
    ray job submit --address http://127.0.0.1:8265 --working-dir . \\
        --runtime-env-json "{\\"env_vars\\": {\\"XMC_WORKDIR\\": \\"$PWD\\"}}" \\
        -- python jobs/train.py --config ...

The run directory is ``run.storage/run.name`` (name defaults to the config files' stems). Rerunning the same
command after a kill resumes from the run's last checkpoint. The run directory holds the resolved
config.yaml, metrics.json (after each evaluation), history.jsonl, predictions.npz, tensorboard/ and
training.png, next to Ray's checkpoint_* directories.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import _bootstrap  # noqa: F401  (xmc from this checkout where it is not installed)

from xmc.cli import add_config_arguments, config_from_args, config_name, run_cli
from xmc.experiment import ExperimentConfig


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser, required=True)
    args = parser.parse_args()
    config = config_from_args(ExperimentConfig, args)

    import xmc
    from xmc.training.driver import run_training

    print(f"xmc {xmc.__version__} from {Path(xmc.__file__).parent}", flush=True)  # which code this job runs
    result, run_location = run_training(config, default_name=config_name(args))
    print(f"run: {run_location}")
    # what the last epoch reported to Ray: its metrics.json holds every predictor's
    print(json.dumps(result.metrics or {}, indent=1))
    return 0


if __name__ == "__main__":
    run_cli(main)
