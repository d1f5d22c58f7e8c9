"""Quality side by side: every recipe against TF-IDF peers and the zero-shot encoder, in one run.

    python benchmarks/quality.py                       # cooking-stackexchange and reuters-21578
    python benchmarks/quality.py --full                # also wordnet-reverse-dictionary (GPU or a long CPU run)
    python benchmarks/quality.py --datasets reuters-21578 --recipes prime --set train.epochs=4

For each dataset: the zero-shot encoder (``jobs/evaluate.py --encoder default``), PECOS XR-Linear and
napkinXC PLT on TF-IDF features (in a venv of their own, ``.bench/peers-venv``, because they need numpy<2
and scipy<1.14; created on first use from ``benchmarks/peers/requirements.txt``), and each recipe of
``configs/methods/`` trained with ``jobs/train.py``'s driver. All predictions are scored by the project's
evaluator (same filters, propensities and metrics). Prints a Markdown table and writes ``.bench/quality.json``.
Training runs live in ``.bench/runs/quality-<dataset>-<recipe>``; a rerun reuses finished runs (``--fresh``
retrains them).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from xmc.config import load_config
from xmc.data.dataset import PreparedDataset
from xmc.evaluation.evaluator import evaluate_predictions
from xmc.evaluation.predictor import zero_shot_predict
from xmc.experiment import ExperimentConfig
from xmc.io import write_json
from xmc.training.driver import ensure_prepared, resolve_run, run_training

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / ".bench"
COLUMNS = ("P@1", "P@5", "nDCG@5", "PSP@1", "PSP@5")
RECIPES = ("unidec", "dexml", "prime")
DATASETS = ("cooking-stackexchange", "reuters-21578")

# Schedules sized for 2 CPU cores (cooking/reuters) or a GPU (wordnet); recipes keep their own settings.
DATASET_SETTINGS = {
    "cooking-stackexchange": ["train.epochs=2", "train.batch_size=256"],
    "reuters-21578": ["train.epochs=3", "train.batch_size=64"],
    "wordnet-reverse-dictionary": ["train.epochs=3", "train.batch_size=256", "pool.max_size=1024"],
}
RECIPE_SETTINGS = {
    # all 147K labels in every step is a multi-GPU setting: DEXML with mined hard negatives instead
    ("wordnet-reverse-dictionary", "dexml"): ["pool.all_labels=false"],
}


def peers_python() -> Path:
    venv = BENCH / "peers-venv"
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        env = {k: v for k, v in os.environ.items()
               if not (k.lower().endswith("_proxy") and "127.0.0.1:9" in v)}  # the loopback env's closed port
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "-r",
                        str(REPO / "benchmarks" / "peers" / "requirements.txt")], check=True, env=env)
    return python


def score(dataset: PreparedDataset, config: ExperimentConfig, indices, scores) -> dict:
    return evaluate_predictions(dataset, indices, scores, config.dataset.propensity_a, config.dataset.propensity_b)


def run_peers(dataset: PreparedDataset, config: ExperimentConfig, workdir: Path) -> dict[str, dict]:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "train_texts.json").write_text(json.dumps(dataset.texts("train", config.dataset.query_text)))
    (workdir / "test_texts.json").write_text(json.dumps(dataset.texts("test", config.dataset.query_text)))
    sp.save_npz(workdir / "train_labels.npz", dataset.label_matrix("train"))
    subprocess.run([str(peers_python()), str(REPO / "benchmarks" / "peers" / "run_peers.py"), str(workdir)],
                   check=True)
    results = {}
    for name, label in (("pecos", "PECOS XR-Linear (TF-IDF)"), ("napkinxc", "napkinXC PLT (TF-IDF)")):
        with np.load(workdir / f"{name}.npz") as npz:
            results[label] = {**score(dataset, config, npz["indices"], npz["scores"]),
                              "train_s": float(npz["seconds"])}
    return results


def run_recipe(dataset_name: str, recipe: str, overrides: list[str], fresh: bool) -> dict:
    config = load_config(ExperimentConfig, [REPO / "configs" / "datasets" / f"{dataset_name}.yaml",
                                            REPO / "configs" / "methods" / f"{recipe}.yaml"],
                         [*DATASET_SETTINGS.get(dataset_name, []), *RECIPE_SETTINGS.get((dataset_name, recipe), []),
                          f"run.storage={BENCH / 'runs'}", f"run.name=quality-{dataset_name}-{recipe}",
                          "train.progress=false", *overrides])
    _, run_dir = resolve_run(config)
    if fresh and run_dir.exists():
        shutil.rmtree(run_dir)
    run_training(config)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    return {**{k: metrics[k] for k in metrics if not isinstance(metrics[k], dict)},
            "train_s": sum(h["seconds"] for h in history), "epochs": len(history)}


def table(results: dict[str, dict[str, dict]]) -> str:
    lines = ["| dataset | method | " + " | ".join(COLUMNS) + " | train time |",
             "|---|---|" + "---|" * (len(COLUMNS) + 1)]
    for dataset_name, rows in results.items():
        for method, metrics in rows.items():
            seconds = metrics.get("train_s")
            time_cell = "–" if seconds is None else f"{seconds / 60:.1f} min"
            lines.append(f"| {dataset_name} | {method} | " + " | ".join(f"{metrics[c]:.2f}" for c in COLUMNS)
                         + f" | {time_cell} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    parser.add_argument("--full", action="store_true", help="also wordnet-reverse-dictionary")
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=RECIPES)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="override for every recipe")
    parser.add_argument("--fresh", action="store_true", help="retrain runs that already finished")
    parser.add_argument("--out", default=str(BENCH / "quality.json"))
    args = parser.parse_args()
    datasets = list(args.datasets) + (["wordnet-reverse-dictionary"] if args.full else [])

    results: dict[str, dict[str, dict]] = {}
    for name in datasets:
        config = load_config(ExperimentConfig, REPO / "configs" / "datasets" / f"{name}.yaml")
        config, _ = resolve_run(config)
        dataset = ensure_prepared(config)
        rows: dict[str, dict] = {}
        started = time.perf_counter()
        rows["zero-shot all-MiniLM-L6-v2"] = score(dataset, config, *zero_shot_predict(
            dataset, config.dataset, config.encoder, config.eval, progress=False))
        rows["zero-shot all-MiniLM-L6-v2"]["train_s"] = None
        print(f"{name}: zero-shot in {time.perf_counter() - started:.0f}s", flush=True)
        rows.update(run_peers(dataset, config, BENCH / "peers" / name))
        for recipe in args.recipes:
            started = time.perf_counter()
            rows[recipe] = run_recipe(name, recipe, args.overrides, args.fresh)
            print(f"{name}: {recipe} P@1 {rows[recipe]['P@1']:.2f} ({time.perf_counter() - started:.0f}s)",
                  flush=True)
        results[name] = rows
        write_json(Path(args.out), results)
    print(table(results))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
