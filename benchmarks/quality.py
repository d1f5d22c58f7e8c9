r"""Quality side by side: every recipe against TF-IDF peers and the zero-shot encoder, in one run.

    python benchmarks/quality.py                    # cooking-stackexchange and reuters-21578
    python benchmarks/quality.py --full             # also wordnet-reverse-dictionary (GPU or a long CPU run)
    python benchmarks/quality.py --datasets reuters-21578 --recipes prime --set train.epochs=4
    python benchmarks/quality.py --datasets wordnet-reverse-dictionary --baselines zero-shot --concurrent \
        --set train.use_gpu=true --set train.gpus_per_worker=0.3 --set train.threads_per_worker=4
    python benchmarks/quality.py --merge .bench/quality-gpu.json .bench/quality-peers.json

For each dataset: the zero-shot encoder (``jobs/evaluate.py --encoder default``), PECOS XR-Linear and
napkinXC PLT on TF-IDF features (in a venv of their own, ``.bench/peers-venv``, because they need numpy<2
and scipy<1.14; created on first use from ``benchmarks/peers/requirements.txt``), and each recipe of
``configs/methods/`` trained with ``jobs/train.py``'s driver. All predictions are scored by the project's
evaluator (same filters, propensities and metrics). Prints a Markdown table and writes
``.bench/quality.json``. Training runs live in ``.bench/runs/quality-<dataset>-<recipe>``; a rerun reuses
finished runs (``--fresh`` retrains them).

``--concurrent`` trains a dataset's recipes side by side, each in a process of its own that joins this
process's Ray cluster (logs in ``.bench/logs``), with a share of a GPU per worker (``train.gpus_per_worker``).
The GPU is time-shared, not multiplied (docs/performance.md); what the runs gain is overlapping their CPU
phases: mining, clustering, evaluation.
``--calibrate F`` trains each recipe on all but a fraction F of the training points and adds a row for the
same run scored on test with the fused-score settings chosen on those held-out points (``jobs/calibrate.py``:
the weight of cos_DE and an offset for labels without training positives; the test split plays no part in
the choice). ``--baselines`` picks the rows computed beside the recipes; a machine that cannot install the
peers (an offline GPU host) leaves them out, and ``--merge`` joins the JSON of runs made on different machines
into one table.
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

from xmc.cluster import init_ray
from xmc.config import load_config
from xmc.data.dataset import PreparedDataset
from xmc.evaluation.calibration import calibrate_run
from xmc.evaluation.config import CalibrateConfig
from xmc.evaluation.evaluator import evaluate_model, evaluate_predictions
from xmc.evaluation.retrieval import zero_shot_predict
from xmc.experiment import ExperimentConfig
from xmc.io import write_json
from xmc.scoring import fusion
from xmc.scoring.neighbours import training_memory
from xmc.scoring.run import TrainedRun
from xmc.training.driver import ensure_prepared, resolve_run, run_training

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / ".bench"
COLUMNS = ("P@1", "P@5", "nDCG@5", "PSP@1", "PSP@5")
RECIPES = ("unidec", "dexml", "prime")
DATASETS = ("cooking-stackexchange", "reuters-21578")
BASELINES = ("zero-shot", "peers")

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
    return evaluate_predictions(dataset, indices, scores, config.dataset.propensity_a,
                                config.dataset.propensity_b)


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


def run_recipes_concurrently(dataset_name: str, recipes: list[str], overrides: list[str],
                             fresh: bool, hold_out: float) -> dict:
    """Each recipe in a child process (this script, one recipe, no baselines) joining this process's Ray."""
    import ray

    init_ray()
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    logs, parts = BENCH / "logs", BENCH / "parts"
    logs.mkdir(parents=True, exist_ok=True)
    parts.mkdir(parents=True, exist_ok=True)
    children = {}
    for recipe in recipes:
        part, log = parts / f"{dataset_name}-{recipe}.json", logs / f"quality-{dataset_name}-{recipe}.log"
        part.unlink(missing_ok=True)
        command = [sys.executable, str(Path(__file__).resolve()), "--datasets", dataset_name,
                   "--recipes", recipe, "--baselines", "--out", str(part), *(["--fresh"] if fresh else []),
                   *(["--calibrate", str(hold_out)] if hold_out else []),
                   *(arg for override in overrides for arg in ("--set", override))]
        with log.open("w") as stream:
            child = subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT, env=env)
        children[recipe] = (child, part, log)
        print(f"{dataset_name}: {recipe} started (log {log})", flush=True)
    rows, failed = {}, []
    try:
        for recipe, (child, part, log) in children.items():
            if child.wait() != 0:
                failed.append(f"{recipe} (exit {child.returncode}, log {log})")
                continue
            for name, row in json.loads(part.read_text())[dataset_name].items():
                rows[name] = row
                print(f"{dataset_name}: {name} P@1 {row['P@1']:.2f}", flush=True)
    finally:  # interrupted: stop the children too (their runs resume from their last checkpoints)
        for child, _, _ in children.values():
            if child.poll() is None:
                child.terminate()
    if failed:
        raise SystemExit(f"{dataset_name}: recipes failed: {', '.join(failed)}")
    return rows


def merge_results(paths: list[Path]) -> dict[str, dict[str, dict]]:
    """The rows of several result files, dataset by dataset (a later file's row replaces an earlier one)."""
    merged: dict[str, dict[str, dict]] = {}
    for path in paths:
        try:
            results = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise SystemExit(f"--merge: cannot read {path}: {err}") from None
        for dataset_name, rows in results.items():
            merged.setdefault(dataset_name, {}).update(rows)
    # as one run orders them: the baselines, then the recipes in RECIPES order
    rank = {recipe: i + 1 for i, recipe in enumerate(RECIPES)}
    return {name: dict(sorted(rows.items(), key=lambda row: rank.get(row[0], 0)))
            for name, rows in merged.items()}


def run_recipe(dataset_name: str, recipe: str, overrides: list[str], fresh: bool,
               hold_out: float = 0.0) -> dict[str, dict]:
    """The recipe's row, and with ``hold_out`` a second row: the same run scored on test with the fused-score
    settings ``jobs/calibrate.py`` chose on the run's validation hold-out (that fraction of the training
    points, never trained on)."""
    suffix = "-holdout" if hold_out else ""
    config = load_config(ExperimentConfig, [REPO / "configs" / "datasets" / f"{dataset_name}.yaml",
                                            REPO / "configs" / "methods" / f"{recipe}.yaml"],
                         [*DATASET_SETTINGS.get(dataset_name, []),
                          *RECIPE_SETTINGS.get((dataset_name, recipe), []),
                          f"run.storage={BENCH / 'runs'}",
                          f"run.name=quality-{dataset_name}-{recipe}{suffix}",
                          "train.progress=false",
                          *([f"dataset.validation_fraction={hold_out}"] if hold_out else []), *overrides])
    _, run_dir = resolve_run(config)  # under .bench/runs: a local path
    if fresh and Path(run_dir).exists():
        shutil.rmtree(run_dir)
    run_training(config)
    metrics = json.loads((Path(run_dir) / "metrics.json").read_text())
    history = [json.loads(line) for line in (Path(run_dir) / "history.jsonl").read_text().splitlines()]
    train = {"train_s": sum(h["seconds"] for h in history), "epochs": len(history)}
    rows = {recipe: {**{k: metrics[k] for k in metrics if not isinstance(metrics[k], dict)}, **train}}
    if hold_out:
        record = calibrate_run(run_dir, CalibrateConfig())
        rows[f"{recipe} + calibration"] = {**calibrated_test_metrics(run_dir, record), **train,
                                           "calibration": record["selected"],
                                           "validation_" + record["metric"]:
                                               record["validation"][record["metric"]]}
    return rows


def calibrated_test_metrics(run_dir: str, record: dict) -> dict:
    """Test metrics of the calibrated checkpoint with the settings the calibration chose (fused score)."""
    run = TrainedRun.open(run_dir, record["checkpoint"])
    fusion.apply(run.config.model, record["selected"])
    scoring = run.scoring_model()
    neighbours = None
    if run.config.model.neighbour_weight:
        neighbours = training_memory(scoring, run.token_cache().arrays("train"), run.split.train_rows,
                                     run.dataset.label_matrix("train"), run.config.eval.ann)
    results, _ = evaluate_model(scoring, run.dataset, run.token_cache().arrays("test"), "test", None,
                                run.config.eval, run.config.dataset, run.split.propensity_rows,
                                neighbours=neighbours)
    return results.get("fused") or results["de"]


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
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    parser.add_argument("--full", action="store_true", help="also wordnet-reverse-dictionary")
    parser.add_argument("--recipes", nargs="*", default=list(RECIPES), choices=RECIPES)
    parser.add_argument("--baselines", nargs="*", default=list(BASELINES), choices=BASELINES,
                        help="rows computed beside the recipes (none: --baselines with no value)")
    parser.add_argument("--concurrent", action="store_true", help="train a dataset's recipes side by side")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="override for every recipe")
    parser.add_argument("--fresh", action="store_true", help="retrain runs that already finished")
    parser.add_argument("--calibrate", type=float, default=0.0, metavar="FRACTION",
                        help="train on all but this fraction of the training points, choose the fused-score "
                             "settings on that hold-out (jobs/calibrate.py) and add a "
                             "'<recipe> + calibration' row: the same run on test with them")
    parser.add_argument("--merge", nargs="+", type=Path, metavar="JSON",
                        help="print (and write to --out) the table of earlier results instead of running")
    parser.add_argument("--out", default=str(BENCH / "quality.json"))
    args = parser.parse_args()
    if args.merge:
        results = merge_results(args.merge)
        write_json(Path(args.out), results)
        print(table(results))
        return
    datasets = list(args.datasets) + (["wordnet-reverse-dictionary"] if args.full else [])

    results: dict[str, dict[str, dict]] = {}
    out = Path(args.out)
    for name in datasets:
        # the --set overrides reach the baselines too (a dataset.prepared or encoder.model elsewhere)
        config = load_config(ExperimentConfig, REPO / "configs" / "datasets" / f"{name}.yaml", args.overrides)
        config, _ = resolve_run(config)
        dataset = ensure_prepared(config)
        rows = results[name] = {}  # written after every row: an interrupted run keeps what it finished
        if "zero-shot" in args.baselines:
            started = time.perf_counter()
            rows["zero-shot all-MiniLM-L6-v2"] = score(dataset, config, *zero_shot_predict(
                dataset, config.dataset, config.encoder, config.eval, progress=False))
            rows["zero-shot all-MiniLM-L6-v2"]["train_s"] = None
            print(f"{name}: zero-shot in {time.perf_counter() - started:.0f}s", flush=True)
            write_json(out, results)
        if "peers" in args.baselines:
            rows.update(run_peers(dataset, config, BENCH / "peers" / name))
            write_json(out, results)
        if args.concurrent and len(args.recipes) > 1:
            rows.update(run_recipes_concurrently(name, args.recipes, args.overrides, args.fresh,
                                                 args.calibrate))
            write_json(out, results)
        else:
            for recipe in args.recipes:
                started = time.perf_counter()
                made = run_recipe(name, recipe, args.overrides, args.fresh, args.calibrate)
                rows.update(made)
                seconds = time.perf_counter() - started
                for method, row in made.items():
                    print(f"{name}: {method} P@1 {row['P@1']:.2f} ({seconds:.0f}s)", flush=True)
                write_json(out, results)
    print(table(results))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
