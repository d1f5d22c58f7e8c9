r"""Does a lexical channel add to the neural scores? Measured on a run's validation hold-out, reported on
test.

    python benchmarks/lexical.py --run runs/demo-val [--weights 0 0.05 0.1 0.2 0.3 0.5]

The run must have been trained with ``dataset.validation_fraction > 0``. Its model (with the fused-score
settings export would give it: its calibration.json when it has one) ranks the top ``--candidates`` labels of
every held-out and every test query by exact search; :mod:`xmc.scoring.lexical` fits TF-IDF label vectors on
the training points that remain after the hold-out and re-ranks those candidates by ``fused + weight ·
lexical``. The weight is chosen by validation P@1 alone; the test split is scored once per weight for the
report, never to choose. Prints one JSON object: validation and test metrics per weight, the chosen weight,
and the test metrics without and with it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True)
    parser.add_argument("--weights", type=float, nargs="+", default=[0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0])
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--metric", default="P@1")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "platform"))

    from xmc.data.tokens import load_tokenizer
    from xmc.evaluation.calibration import read_calibration
    from xmc.evaluation.evaluator import evaluate_predictions
    from xmc.mining.ann import build_index, search
    from xmc.mining.config import AnnConfig
    from xmc.scoring import fusion
    from xmc.scoring.fusion import rerank
    from xmc.scoring.lexical import LexicalChannel
    from xmc.scoring.run import TrainedRun

    run = TrainedRun.open(args.run)
    if not len(run.split.validation_rows):
        raise SystemExit(f"{args.run}: no validation hold-out to choose the weight on")
    chosen = read_calibration(run.location, run.checkpoint_name)
    if chosen:
        fusion.apply(run.config.model, chosen)
    scoring = run.scoring_model(device="cpu")
    cache = run.token_cache()
    index = build_index(scoring.label_vectors(), AnnConfig(kind="flat"))
    tokenizer = load_tokenizer(scoring.model.encoder.model_dir)
    train_rows, held = run.split.train_rows, run.split.validation_rows
    ids, lengths = cache.arrays("train")
    lexical = LexicalChannel.fit((ids[train_rows], lengths[train_rows]),
                                 run.dataset.label_matrix("train")[train_rows], cache.arrays("labels"),
                                 len(tokenizer), np.array(tokenizer.all_special_ids))
    data = run.config.dataset
    splits = {"validation": ("train", held), "test": ("test", None)}
    report: dict = {"run": run.location, "checkpoint": run.checkpoint_name, "calibration": chosen,
                    "weights": {}}
    ranked = {}
    for name, (split, rows) in splits.items():
        tokens = cache.arrays(split)
        if rows is not None:
            tokens = (tokens[0][rows], tokens[1][rows])
        scores, indices = search(index, scoring.query_vectors(tokens), args.candidates)
        ranked[name] = (indices, scores, lexical.scores(lexical.queries(tokens), indices), split, rows)
    for weight in args.weights:
        row = {}
        for name, (indices, scores, lexical_scores, split, rows) in ranked.items():
            order, combined = rerank(indices, scores, lexical_scores, weight)
            row[name] = evaluate_predictions(run.dataset, order, combined, data.propensity_a,
                                             data.propensity_b, split=split, rows=rows,
                                             train_rows=run.split.propensity_rows)
        report["weights"][str(weight)] = row
    best = max(args.weights, key=lambda w: report["weights"][str(w)]["validation"][args.metric])
    report["chosen_weight"] = best
    report["test_without"] = report["weights"][str(args.weights[0])]["test"]
    report["test_with_chosen"] = report["weights"][str(best)]["test"]
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
