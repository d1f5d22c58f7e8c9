"""Choose a trained run's fused-score settings on its validation hold-out (``jobs/calibrate.py``).

The run must have been trained with ``dataset.validation_fraction > 0``: those points never entered its
batches, shortlists, clusters or label counts, so a label whose only positives are held out is a cold-start
label to the model, as test-only labels are. Every grid point of :class:`CalibrateConfig` is scored with the
project's metrics on the hold-out; the best one by ``metric`` is written to the run's ``calibration.json``,
which ``jobs/export.py`` applies. The test split is never read.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from xmc.config import ConfigError, load_config
from xmc.evaluation import calibration
from xmc.evaluation.config import CalibrateConfig
from xmc.evaluation.evaluator import evaluate_predictions
from xmc.evaluation.metrics import REPORTED_METRICS
from xmc.experiment import ExperimentConfig
from xmc.io import write_json


def calibrate_run(run_dir: str | Path, config: CalibrateConfig) -> dict:
    """Search the grid on ``run_dir``'s validation hold-out; write and return the calibration record."""
    from xmc.index.export import CALIBRATION_FILE, find_checkpoint, load_trained

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"--run: {run_dir} is not a directory")
    if config.metric not in REPORTED_METRICS:
        raise ConfigError(f"metric: {config.metric!r} is not one of {', '.join(REPORTED_METRICS)}")
    checkpoint = find_checkpoint(run_dir, config.checkpoint)
    if load_config(ExperimentConfig, run_dir / "config.yaml").dataset.validation_fraction <= 0:
        raise ConfigError(f"--run: {run_dir} has no validation hold-out to calibrate on; train it with "
                          f"--set dataset.validation_fraction=0.05 (or more)")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="xmc-calibrate-") as scratch:
        trainer = load_trained(run_dir, checkpoint, Path(scratch))
        rows = trainer.validation_rows
        heads = trainer.config.model
        heads.clf_untrained = "table"
        labels_de, labels_table = trainer.scoring_vectors()
        classifier = labels_table is not None
        untrained_text = trainer.untrained_text_vectors() if classifier and len(trainer.untrained_labels) else None
        queries = trainer.query_vectors("train", rows)
    grid = calibration.make_grid(config.de_weights if classifier else [1.0], config.cold_start_offsets,
                                 config.clf_untrained if classifier else ["table"])
    d = trainer.model.de_dim
    dataset, data_config = trainer.dataset, trainer.config.dataset
    predictions = calibration.grid_topk(queries[:, :d], queries[:, d:] if classifier else None, labels_de,
                                        labels_table, untrained_text, trainer.untrained_labels, grid,
                                        config.top_k, device=trainer.device)
    cold = trainer.untrained_labels
    results = []
    for point, (indices, scores) in zip(grid, predictions):
        metrics = evaluate_predictions(dataset, indices, scores, data_config.propensity_a, data_config.propensity_b,
                                       split="train", rows=rows, train_rows=trainer.propensity_rows)
        # how often a cold-start label is ranked first: what the offset trades against the trained labels
        metrics["top1_cold_start"] = round(100 * float(np.isin(indices[:, 0], cold).mean()), 4)
        results.append((point, metrics))
    best, best_metrics = calibration.select(results, config.metric)
    record = {
        "checkpoint": checkpoint.name,
        "metric": config.metric,
        "selected": vars(best),
        "validation": best_metrics,
        "validation_points": int(len(rows)),
        "cold_start_labels": int(len(cold)),
        "validation_positives_on_cold_start_labels": round(cold_start_share(dataset, rows, cold), 4),
        "grid": [{**vars(point), **metrics} for point, metrics in results],
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_json(run_dir / CALIBRATION_FILE, record)
    return record


def cold_start_share(dataset, rows: np.ndarray, cold_start: np.ndarray) -> float:
    """The fraction of the hold-out's positives that are cold-start labels (how much the offset can matter)."""
    truth = dataset.label_matrix("train")[rows]
    if truth.nnz == 0:
        return 0.0
    return float(np.isin(truth.indices, cold_start).mean())
