r"""Training at many labels: wall time and each worker's peak memory against the number of labels and workers,
on synthetic data (this measures cost, not quality).

    python benchmarks/scale.py --labels 20000 100000 --queries 20000 --workers 1 2
    python benchmarks/scale.py --labels 1300000 --queries 200000 --workers 2 --steps 20

Data: label texts of 2 to 4 words drawn from the tokenizer's whole-word vocabulary, queries made of the
words of 1 to 3 of their labels plus 2 random words (so mining has structure to find), 1,000 test queries;
in the LF layout, prepared with ``jobs/prepare.py``'s library. Encoder: a one-layer BERT of MiniLM's width
(384, ``benchmarks/tiny_encoder.py``), so that every label-side vector and table is as large as the real
encoder's while compute stays affordable on a CPU.

Each run is the demo recipe (UniDEC: encoder, classifier table, mined hard negatives) through Ray Train with
``--workers`` CPU workers: 2 epochs of ``--steps`` steps each, a mining refresh before the second (every
label and training query encoded, each worker indexing its own labels) and an evaluation after each. What
each worker holds of the labels is its share of the classifier table (with Adam's moments), its labels'
vectors and their index.

Reported per (labels, workers): wall seconds of the training job and of each epoch, and each worker's peak
RSS (from the run's ``history.jsonl``). With two label counts, ``marginal_mib_per_100k_labels`` is the
growth of the largest worker's peak RSS per 100,000 labels at each worker count, and ``ratio_to_one_worker``
that growth against one worker's: label state split across W workers makes it about 1/W, while gathering
every label's vectors on every worker would keep it near 1.

Prints one JSON object; data, runs and the encoder live in ``.bench/scale``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / ".bench" / "scale"
WIDTH = 384
TEST_QUERIES = 1000


def write_lines(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with gzip.open(tmp, "wt", encoding="utf-8", compresslevel=1) as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    os.replace(tmp, path)


def synthetic_source(out: Path, num_labels: int, num_queries: int, vocabulary: list[str],
                     seed: int = 0) -> Path:
    """An LF-layout dataset of ``num_labels`` labels and ``num_queries`` training queries (written once)."""
    if (out / "tst.json.gz").is_file():
        return out
    rng = np.random.default_rng(seed)
    words = np.asarray(vocabulary)
    label_words = [rng.choice(len(words), rng.integers(2, 5)) for _ in range(num_labels)]
    write_lines(out / "lbl.json.gz", ({"uid": f"L{i}", "title": " ".join(words[w]), "content": ""}
                                      for i, w in enumerate(label_words)))
    # label popularity is skewed like real sets: a few labels are on many queries, most on a few
    popularity = 1.0 / np.arange(1, num_labels + 1) ** 0.6
    popularity /= popularity.sum()

    def points(count: int, prefix: str):
        for i in range(count):
            tags = np.unique(rng.choice(num_labels, rng.integers(1, 4), p=popularity))
            text = [words[w] for tag in tags for w in label_words[tag]] + list(rng.choice(words, 2))
            rng.shuffle(text)
            yield {"uid": f"{prefix}{i}", "title": " ".join(text), "content": "",
                   "target_ind": tags.tolist(), "target_rel": [1.0] * len(tags)}

    write_lines(out / "trn.json.gz", points(num_queries, "q"))
    write_lines(out / "tst.json.gz", points(TEST_QUERIES, "t"))
    return out


def whole_words(model_dir: Path) -> list[str]:
    from xmc.data.tokens import load_tokenizer

    vocab = load_tokenizer(model_dir).get_vocab()
    return sorted(token for token in vocab if token.isalpha() and token.isascii() and len(token) >= 4)


def train(prepared: Path, encoder: Path, workers: int, steps: int, name: str) -> dict:
    threads = max(1, (os.cpu_count() or 1) // workers)
    settings = [f"dataset.prepared={prepared}", f"encoder.model={encoder}", "dataset.max_len=24",
                f"train.num_workers={workers}", "train.epochs=2", f"train.max_steps_per_epoch={steps}",
                "train.batch_size=128", f"train.threads_per_worker={threads}",
                "train.progress=false", f"run.storage={WORK / 'runs'}", f"run.name={name}",
                "eval.top_k=10", "mining.shortlist_size=16"]
    command = [sys.executable, str(REPO / "jobs" / "train.py"), "--config", str(REPO / "configs/demo.yaml")]
    command += [flag for setting in settings for flag in ("--set", setting)]
    shutil.rmtree(WORK / "runs" / name, ignore_errors=True)  # a fresh run, never a resumed one
    started = time.time()
    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    seconds = time.time() - started
    history = [json.loads(line) for line in (WORK / "runs" / name / "history.jsonl").read_text().splitlines()]
    peaks = [max(record["peak_rss_mib"][rank] for record in history) for rank in range(workers)]
    return {"seconds": round(seconds, 1), "peak_rss_mib": peaks,
            "epoch_seconds": [record["seconds"] for record in history]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labels", type=int, nargs="+", default=[20_000, 100_000])
    parser.add_argument("--queries", type=int, default=20_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=10, help="training steps per epoch")
    args = parser.parse_args()

    sys.path.insert(0, str(REPO / "platform"))
    sys.path.insert(0, str(REPO / "benchmarks"))
    from tiny_encoder import write_tiny_encoder

    from xmc.data.prepare import prepare_dataset
    from xmc.models.encoder import resolve_model_dir

    encoder = WORK / f"encoder-{WIDTH}"
    if not (encoder / "config.json").is_file():
        write_tiny_encoder(encoder, resolve_model_dir("default"), WIDTH)
    vocabulary = whole_words(encoder)
    report = {"queries": args.queries, "steps_per_epoch": args.steps, "width": WIDTH, "runs": []}
    for labels in args.labels:
        name = f"L{labels}-N{args.queries}"
        source = synthetic_source(WORK / "data" / name / "source", labels, args.queries, vocabulary)
        started = time.time()
        prepare_dataset(source, WORK / "data" / name / "prepared")
        prepare_seconds = round(time.time() - started, 1)
        for workers in args.workers:
            run = train(WORK / "data" / name / "prepared", encoder, workers, args.steps, f"{name}-W{workers}")
            report["runs"].append({"labels": labels, "workers": workers, "prepare_seconds": prepare_seconds,
                                   **run})
            print(json.dumps(report["runs"][-1]), file=sys.stderr, flush=True)
    if len(args.labels) >= 2:
        low, high = min(args.labels), max(args.labels)
        marginal = {}
        for workers in args.workers:
            peak = {r["labels"]: max(r["peak_rss_mib"]) for r in report["runs"] if r["workers"] == workers}
            marginal[workers] = (peak[high] - peak[low]) / (high - low) * 100_000
        report["marginal_mib_per_100k_labels"] = {str(w): round(m, 1) for w, m in marginal.items()}
        if 1 in marginal:
            report["ratio_to_one_worker"] = {str(w): round(m / marginal[1], 3) for w, m in marginal.items()}
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
