"""Export a trained run as a serving bundle: encoder + heads, sharded faiss label index,
label texts, manifest.

    python jobs/export.py --run runs/demo --shards 2 --out bundles/demo
    python jobs/export.py --run runs/wordnet --shards 2 --out bundles/wordnet-ivf \\
        --set ann.kind=ivf --set ann.ivf_nprobe=64
    python jobs/export.py --run runs/demo --out bundles/demo-e1 \\
        --set checkpoint=checkpoint_epoch001_step0000250
    python jobs/export.py --run runs/demo --shards 2 --out bundles/demo-v2 \\
        --add-labels new-tags.json --remove-labels retired-tags.txt

Label vectors are the run's fused scoring vectors ([DE ; classifier], as its evaluation ranks them), with the
settings jobs/calibrate.py chose when the run has a calibration.json (``--set de_weight=...``,
``cold_start_offset=...`` and ``clf_untrained=...`` override them). Each shard gets an exact inner-product
index below ``ann.exact_below`` (50,000) labels and HNSW above it (``--set ann.kind=flat|ivf|hnsw`` forces
one). The bundle is written to a temporary directory and renamed; its manifest records the sha256 of every
file, which loading verifies.

The index shards split the labels by id (shard s of S holds the labels with id % S == s, the training
workers' own split when S equals their number); ``--set workers=N`` builds them in N Ray tasks instead of
one after the other here (each holds one shard's label vectors at a time).

Labels change without retraining: --add-labels takes new labels in the dataset's label file layout (one JSON
object per line: uid, title, optional content); they are scored by their text through the trained towers.
--remove-labels takes uids, one per line; no search returns them. Serve swaps to the new bundle in place.
"""

from __future__ import annotations

import argparse
import json

import _bootstrap  # noqa: F401  (xmc from this checkout where it is not installed)

from xmc.cli import add_config_arguments, config_from_args, run_cli


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True,
                        help="run of jobs/train.py (config.yaml + checkpoints): a path or a storage URI")
    parser.add_argument("--out", required=True,
                        help="bundle to write (replaced if it exists): a path or a storage URI")
    parser.add_argument("--shards", type=int, help="label index shards (default 1; same as --set shards=N)")
    parser.add_argument("--add-labels", metavar="FILE",
                        help="labels to add, scored by their text (JSON lines: uid, title, content)")
    parser.add_argument("--remove-labels", metavar="FILE", help="uids of labels to remove, one per line")
    add_config_arguments(parser)
    args = parser.parse_args()

    from xmc.index.config import ExportConfig

    if args.shards is not None:
        args.overrides = [f"shards={args.shards}", *args.overrides]
    config = config_from_args(ExportConfig, args)
    config.add_labels = args.add_labels or config.add_labels  # file names, never parsed as YAML values
    config.remove_labels = args.remove_labels or config.remove_labels

    from xmc.index.bundle import Bundle
    from xmc.index.export import check_bundle, export_run

    built: list[dict] = []
    out = export_run(args.run, args.out, config, built)
    check_bundle(out)
    manifest = Bundle(out).manifest
    print(f"wrote {out}")
    print(json.dumps({"version": manifest["version"], **manifest["counts"], **manifest["label_edits"],
                      "indexes": [s["index"] for s in manifest["shards"]],
                      "shards_built": [{key: round(value, 1) if isinstance(value, float) else value
                                        for key, value in shard.items()} for shard in built]}, indent=1))
    return 0


if __name__ == "__main__":
    run_cli(main)
