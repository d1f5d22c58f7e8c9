r"""Labels added after training: how well a model ranks labels it never trained on, once they are added to its
bundle by text (``jobs/export.py --add-labels``), against the zero-shot encoder and a model trained with them.

    python benchmarks/label_edits.py                          # cooking-stackexchange, 5% of labels held out
    python benchmarks/label_edits.py --fraction 0.1 --full-bundle bundles/demo --set train.epochs=2

A seeded ``--fraction`` of the labels that have test positives is held out: the held-out dataset drops those
labels, every training point tagged with one of them, and their test tags. The demo recipe trains on it
(``jobs/train.py``); ``jobs/export.py --add-labels`` then adds the held-out labels back by their text. The
three predictors rank all of the dataset's labels for the test questions that carry a held-out label:

- ``added``: the held-out model's bundle with the labels added after training;
- ``zero-shot``: the pre-trained encoder (label and question embeddings, cosine);
- ``trained with them``: ``--full-bundle``, a bundle of the same recipe trained on every label (by default
  the demo's ``bundles/demo``, which ``bash scripts/demo.sh`` exports).

Reported per predictor: P@1 and P@5 over all labels, and R@10 of the held-out labels alone (the share of the
held-out test tags found in the top 10). Prints JSON; runs and bundles live under ``.bench/label-edits``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "platform"))

from xmc.config import load_config  # noqa: E402
from xmc.data.dataset import PreparedDataset  # noqa: E402
from xmc.evaluation.config import EvalConfig  # noqa: E402
from xmc.evaluation.retrieval import zero_shot_predict  # noqa: E402
from xmc.experiment import ExperimentConfig  # noqa: E402
from xmc.index.predictor import Predictor  # noqa: E402

WORK = REPO / ".bench" / "label-edits"


def read_json_lines(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def write_json_lines(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with gzip.open(tmp, "wt", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    os.replace(tmp, path)


def held_out_source(source: Path, dest: Path, fraction: float, seed: int) -> list[dict]:
    """Write the dataset without the held-out labels to ``dest``; return the held-out label rows."""
    labels = read_json_lines(source / "lbl.json.gz")
    train, test = read_json_lines(source / "trn.json.gz"), read_json_lines(source / "tst.json.gz")
    tested = sorted({label for row in test for label in row["target_ind"]})
    rng = np.random.default_rng(seed)
    held = set(rng.choice(tested, max(1, round(fraction * len(labels))), replace=False).tolist())
    kept = [number for number in range(len(labels)) if number not in held]
    new_id = {old: new for new, old in enumerate(kept)}

    def retag(row: dict) -> dict:
        pairs = [(new_id[i], r) for i, r in zip(row["target_ind"], row["target_rel"]) if i in new_id]
        return {**row, "target_ind": [i for i, _ in pairs], "target_rel": [r for _, r in pairs]}

    write_json_lines(dest / "lbl.json.gz", [labels[i] for i in kept])
    write_json_lines(dest / "trn.json.gz", [retag(row) for row in train if not held & set(row["target_ind"])])
    write_json_lines(dest / "tst.json.gz", [retag(row) for row in test])
    return [labels[i] for i in sorted(held)]


def job(script: str, *args: str) -> None:
    print(f"+ jobs/{script} {' '.join(args)}", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, str(REPO / "jobs" / script), *args], cwd=REPO, check=True)


def scores_by_uid(ranked_uids: list[list[str]], truth: list[set[str]], held: set[str]) -> dict[str, float]:
    """P@1, P@5 over all labels and R@10 of the held-out labels, in percent."""
    p1 = np.mean([len(set(uids[:1]) & tags) for uids, tags in zip(ranked_uids, truth)])
    p5 = np.mean([len(set(uids[:5]) & tags) / 5 for uids, tags in zip(ranked_uids, truth)])
    found = sum(len(set(uids[:10]) & tags & held) for uids, tags in zip(ranked_uids, truth))
    total = sum(len(tags & held) for tags in truth)
    return {"P@1": round(100 * p1, 2), "P@5": round(100 * p5, 2),
            "held_out_R@10": round(100 * found / total, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    parser.add_argument("--fraction", type=float, default=0.05, help="share of all labels held out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--full-bundle", default=str(REPO / "bundles" / "demo"),
                        help="bundle of the same recipe trained on every label")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="training settings for the held-out run")
    args = parser.parse_args()

    config = load_config(ExperimentConfig, args.config)
    source = (REPO / config.dataset.source).resolve()
    full = PreparedDataset(REPO / config.dataset.prepared)
    held = held_out_source(source, WORK / "source", args.fraction, args.seed)
    held_uids = {str(label["uid"]) for label in held}
    write_json_lines(WORK / "added.json.gz", held)
    settings = [f"dataset.source={WORK / 'source'}", f"dataset.prepared={WORK / 'prepared'}",
                f"run.storage={WORK / 'runs'}", "run.name=held-out", *args.overrides]
    sets = [flag for setting in settings for flag in ("--set", setting)]
    job("prepare.py", "--config", args.config, *sets)
    job("train.py", "--config", args.config, *sets)
    job("export.py", "--run", str(WORK / "runs" / "held-out"), "--out", str(WORK / "bundle-added"),
        "--add-labels", str(WORK / "added.json.gz"))

    uids = [str(u) for u in full.uids("labels")]
    truth_matrix = full.label_matrix("test")
    rows = [row for row in range(truth_matrix.shape[0])
            if held_uids & {uids[i] for i in truth_matrix[row].indices}]
    truth = [{uids[i] for i in truth_matrix[row].indices} for row in rows]
    texts = full.texts("test", config.dataset.query_text)
    queries = [texts[row] for row in rows]

    report = {"dataset": config.dataset.name, "labels": len(uids), "held_out_labels": len(held),
              "test_questions_with_a_held_out_label": len(rows), "results": {}}
    for name, bundle in (("added", WORK / "bundle-added"), ("trained with them", Path(args.full_bundle))):
        predictor = Predictor.from_bundle(bundle)
        ids, _ = predictor.topk(queries, 10)
        bundle_uids, _ = predictor.bundle.load_labels()
        report["results"][name] = scores_by_uid([[bundle_uids[i] for i in row if i >= 0] for row in ids],
                                                truth, held_uids)
    indices, _ = zero_shot_predict(full, config.dataset, config.encoder, EvalConfig(top_k=10), progress=False)
    report["results"]["zero-shot"] = scores_by_uid([[uids[i] for i in indices[row]] for row in rows], truth,
                                                   held_uids)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
