"""Evaluate top-k predictions on a prepared dataset's test split or validation hold-out, or run the zero-shot
encoder baseline.

    # score an existing prediction file
    python jobs/evaluate.py --data data/cooking-stackexchange --predictions PRED.npz [--out metrics.json]
    # zero-shot: encode labels and test queries with a pre-trained encoder, exact inner-product search
    python jobs/evaluate.py --data data/cooking-stackexchange --encoder default --out runs/zero-shot \\
        --config configs/datasets/cooking-stackexchange.yaml
    # an exported bundle: raw test texts through its Predictor (query tower, shards, top-k merge: as served)
    python jobs/evaluate.py --data data/cooking-stackexchange --bundle bundles/demo --out runs/demo-bundle

    # the same on the validation hold-out of the config's dataset.validation_fraction, per label segment
    python jobs/evaluate.py --config configs/wordnet.yaml --set dataset.validation_fraction=0.05 \
        --bundle bundles/wordnet --out runs/wordnet-bundle-val --split validation --segments

PRED.npz holds ``indices`` (int64, a row per evaluated point, −1 = none) and ``scores`` (float32, same
shape). Propensity constants, max_len, text fields and the hold-out come from the dataset section of --config
(defaults 0.55/1.5). ``--segments`` adds the metrics of seen and unseen, head and tail labels (counted on the
training points that remain after the hold-out; xmc.evaluation.segments).
"""

from __future__ import annotations

import argparse
import json

import _bootstrap  # noqa: F401  (xmc from this checkout where it is not installed)

from xmc import storage
from xmc.cli import add_config_arguments, config_from_args, run_cli
from xmc.config import ConfigError
from xmc.data.dataset import PreparedDataset
from xmc.data.split import TrainingSplit
from xmc.evaluation.evaluator import evaluate_predictions
from xmc.evaluation.predictions import load_predictions, save_predictions
from xmc.evaluation.retrieval import zero_shot_predict
from xmc.experiment import ExperimentConfig


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="prepared dataset directory (default: dataset.prepared of --config)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--predictions", help="PRED.npz to score")
    source.add_argument("--encoder", help="zero-shot: 'default' or a Hugging Face model directory")
    source.add_argument("--bundle", help="a bundle of jobs/export.py: the served model, evaluated offline")
    parser.add_argument("--out", help="metrics.json path (with --predictions) or output directory "
                                      "(with --encoder or --bundle)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--split", choices=["test", "validation"], default="test",
                        help="the test split, or the hold-out of the config's dataset.validation_fraction")
    parser.add_argument("--segments", action="store_true",
                        help="also the metrics of seen/unseen and head/tail labels")
    add_config_arguments(parser)
    args = parser.parse_args()
    config = config_from_args(ExperimentConfig, args)
    data_dir = args.data or config.dataset.prepared
    if not data_dir:
        raise ConfigError("give --data (or a --config whose dataset section sets prepared)")
    dataset = PreparedDataset(data_dir)
    held_out = TrainingSplit.of(dataset, config.dataset)
    if args.split == "validation":
        if not len(held_out.validation_rows):
            raise ConfigError("--split validation needs a hold-out: set dataset.validation_fraction (the "
                              "run's) in --config or --set")
        split, rows = "train", held_out.validation_rows
    else:
        split, rows = "test", None
    count = dataset.num_points(split) if rows is None else len(rows)

    if args.predictions:
        indices, scores = load_predictions(args.predictions, count, dataset.num_labels)
        metrics_path = storage.resolve(args.out) if args.out else None
    else:
        if not args.out:
            raise ConfigError("--encoder and --bundle need --out DIR for PRED.npz and metrics.json")
        if args.bundle:
            from xmc.index.predictor import Predictor

            predictor = Predictor.from_bundle(args.bundle, labels=False)
            texts = dataset.texts(split, predictor.bundle.manifest["query"]["text_fields"])
            if rows is not None:
                texts = [texts[row] for row in rows]
            indices, scores = predictor.topk(texts, config.eval.top_k)
        else:
            config.encoder.model = args.encoder
            indices, scores = zero_shot_predict(dataset, config.dataset, config.encoder, config.eval,
                                                split=split, progress=not args.quiet, rows=rows)
        out = storage.resolve(args.out)
        save_predictions(storage.join(out, "PRED.npz"), indices, scores)
        metrics_path = storage.join(out, "metrics.json")

    metrics = evaluate_predictions(dataset, indices, scores, config.dataset.propensity_a,
                                   config.dataset.propensity_b, split=split, rows=rows,
                                   train_rows=held_out.propensity_rows, segments=args.segments)
    if metrics_path is not None:
        storage.write_json(metrics_path, metrics)
        print(f"wrote {metrics_path}")
    print(json.dumps(metrics, indent=1))
    return 0


if __name__ == "__main__":
    run_cli(main)
