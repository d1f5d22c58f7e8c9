"""Choose a trained run's fused-score settings on its validation hold-out; jobs/export.py then applies them.

    python jobs/train.py --config configs/wordnet.yaml --set dataset.validation_fraction=0.05
    python jobs/calibrate.py --run runs/wordnet [--set metric=nDCG@5 --set "cold_start_offsets=[0,0.1,0.2]"]
    python jobs/export.py --run runs/wordnet --out bundles/wordnet

Searches ``de_weight`` (weight of cos_DE next to cos_CLF), ``cold_start_offset`` (added to labels that no
training query is tagged with) and ``clf_untrained`` on the run's validation hold-out (the run must have been
trained with ``dataset.validation_fraction > 0``), then ``neighbour_weight`` (the query-neighbour channel) on
the best of them; prints both grids, and writes the best point by ``metric`` to RUN/calibration.json. The
test split is never read: evaluate the exported bundle for test figures.
"""

from __future__ import annotations

import argparse
import json

import _bootstrap  # noqa: F401  (xmc from this checkout where it is not installed)

from xmc import storage
from xmc.cli import add_config_arguments, config_from_args, run_cli


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True,
                        help="run directory of jobs/train.py with a validation hold-out")
    add_config_arguments(parser)
    args = parser.parse_args()

    from xmc.evaluation.config import CalibrateConfig

    config = config_from_args(CalibrateConfig, args)

    from xmc.evaluation.calibration import calibrate_run

    record = calibrate_run(args.run, config)
    shown = ("P@1", "P@5", "nDCG@5", "PSP@1", "PSP@5", "top1_cold_start")
    print("| clf_untrained | de_weight | cold_start_offset | " + " | ".join(shown) + " |")
    print("|---|---|---|" + "---|" * len(shown))
    for row in record["grid"]:
        print(f"| {row['clf_untrained']} | {row['de_weight']:g} | {row['cold_start_offset']:g} | "
              + " | ".join(f"{row[key]:.2f}" for key in shown) + " |")
    if record["neighbour_grid"]:
        print("| neighbour_weight | " + " | ".join(shown) + " |")
        print("|---|" + "---|" * len(shown))
        for row in record["neighbour_grid"]:
            print(f"| {row['neighbour_weight']:g} | " + " | ".join(f"{row[key]:.2f}" for key in shown) + " |")
    print(f"validation: {record['validation_points']} points, "
          f"{record['cold_start_labels']} cold-start labels, "
          f"{100 * record['validation_positives_on_cold_start_labels']:.1f}% of positives on them")
    print(f"selected by validation {record['metric']}: {json.dumps(record['selected'])} "
          f"({record['validation'][record['metric']]:.2f}); "
          f"wrote {storage.join(storage.resolve(args.run), 'calibration.json')}")
    return 0


if __name__ == "__main__":
    run_cli(main)
