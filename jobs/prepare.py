"""Prepare an XMC dataset: raw LF json.gz or sparse files -> Parquet, manifest and token cache.

    python jobs/prepare.py --source ../shared/data/cooking-stackexchange --out data/cooking-stackexchange
    python jobs/prepare.py --config configs/datasets/cooking-stackexchange.yaml   # source/out from the config

Rerunning on unchanged input does nothing. Bad input stops with one line: FILE:LINE: what was expected.
"""

from __future__ import annotations

import argparse
import json
import time

import _bootstrap  # noqa: F401  (xmc from this checkout where it is not installed)

from xmc import storage
from xmc.cli import add_config_arguments, config_from_args, run_cli
from xmc.config import ConfigError
from xmc.data.prepare import prepare_dataset
from xmc.experiment import ExperimentConfig


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", help="raw dataset directory (default: dataset.source of --config)")
    parser.add_argument("--out", help="prepared dataset directory (default: dataset.prepared of --config)")
    parser.add_argument("--no-tokens", action="store_true", help="skip building the token cache")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_config_arguments(parser)
    args = parser.parse_args()
    config = config_from_args(ExperimentConfig, args)
    source = args.source or config.dataset.source
    out = args.out or config.dataset.prepared
    if not source or not out:
        raise ConfigError("give --source and --out "
                          "(or a --config whose dataset section sets source and prepared)")

    started = time.perf_counter()
    manifest, changed = prepare_dataset(source, out, config.dataset.allow_empty_text)
    status = "prepared" if changed else "up to date (no-op)"
    print(f"{status}: {storage.resolve(out)} in {time.perf_counter() - started:.1f}s")
    print(json.dumps(manifest["counts"]))
    for split, stats in manifest["splits"].items():
        if stats["duplicate_labels_merged"]:
            print(f"note: {split}: a label listed twice was merged on "
                  f"{stats['duplicate_labels_merged']} row(s), "
                  f"source lines {stats['duplicate_labels_merged_at_lines'][:10]}")
        if stats["empty_titles"]:
            print(f"note: {split}: {stats['empty_titles']} row(s) have an empty title "
                  "(dataset.allow_empty_text)")
    if not args.no_tokens:
        from xmc.data.dataset import PreparedDataset
        from xmc.data.lengths import choose_lengths, token_cache
        from xmc.models.encoder import resolve_model_dir  # imports torch: only when tokenising

        dataset = PreparedDataset(out)
        model_dir = resolve_model_dir(config.encoder.model)
        data, reasons = choose_lengths(config.dataset, dataset, model_dir)
        for key, reason in reasons.items():
            print(f"{key} = {reason}")
        cache = token_cache(dataset, data, model_dir, progress=not args.quiet)
        print(f"token cache: {cache.directory}")
    return 0


if __name__ == "__main__":
    run_cli(main)
