"""Choose a trained run's fused-score settings on its validation hold-out (``jobs/calibrate.py``).

The fused score and how it folds into one inner product are :mod:`xmc.scoring.fusion`'s; this module
searches its settings. The run must have been trained with ``dataset.validation_fraction > 0``: those points
never entered its batches, shortlists, clusters or label counts, so a label whose only positives are held
out is a cold-start label to the model, as test-only labels are. Every grid point of
:class:`~xmc.evaluation.config.CalibrateConfig` is scored with the project's metrics on the hold-out; the
best one by ``metric`` is written to the run's ``calibration.json``, which ``jobs/export.py`` applies. The
query-neighbour channel's weight (:mod:`xmc.scoring.neighbours`) is then chosen on that best point, with the
training points that remain after the hold-out as its memory. The test split is never read.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import time

import numpy as np
import torch

from xmc import storage
from xmc.config import ConfigError
from xmc.evaluation.config import CalibrateConfig
from xmc.evaluation.evaluator import evaluate_predictions
from xmc.evaluation.metrics import REPORTED_METRICS
from xmc.scoring.fusion import ADDED_SETTINGS, SETTINGS, Calibration
from xmc.scoring.neighbours import rerank_top, training_memory
from xmc.scoring.run import TrainedRun

CALIBRATION_FILE = "calibration.json"


def grid_topk(query_de: np.ndarray, query_clf: np.ndarray | None, labels_de: np.ndarray,
              labels_clf_table: np.ndarray | None, untrained_text_clf: np.ndarray | None,
              cold_start: np.ndarray, grid: list[Calibration], k: int, chunk: int = 512,
              device: torch.device | None = None
              ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Exact top-``k`` ``(indices, scores)`` of every grid point, from one pass of matrix products.

    The per-head score matrices of a chunk of queries are computed once and recombined for each grid point,
    so a grid of G points costs one scoring pass plus G cheap combinations instead of G searches.
    ``untrained_text_clf`` holds the classifier-side text vectors of the ``cold_start`` labels (rows in the
    same order), used by the points with ``clf_untrained == "label_text"``; ``labels_clf_table`` are the
    table rows of all labels.
    """
    device = device or torch.device("cpu")

    def on_device(array: np.ndarray | None) -> torch.Tensor | None:
        return None if array is None else torch.from_numpy(np.asarray(array, dtype=np.float32)).to(device)

    de, table, text = on_device(labels_de), on_device(labels_clf_table), on_device(untrained_text_clf)
    cold = torch.from_numpy(np.asarray(cold_start, dtype=np.int64)).to(device)
    out_indices: list[list[np.ndarray]] = [[] for _ in grid]
    out_scores: list[list[np.ndarray]] = [[] for _ in grid]
    for start in range(0, len(query_de), chunk):
        s_de = on_device(query_de[start:start + chunk]) @ de.T
        s_table = s_text = None
        if table is not None:
            q_clf = on_device(query_clf[start:start + chunk])
            s_table = q_clf @ table.T
            if text is not None and len(cold):
                s_text = q_clf @ text.T
        for point, calibration in enumerate(grid):
            scores = s_de * calibration.de_weight
            if s_table is not None:
                scores = scores + s_table
                if calibration.clf_untrained == "label_text" and s_text is not None:
                    scores[:, cold] += s_text - s_table[:, cold]
            if calibration.cold_start_offset and len(cold):
                scores[:, cold] += calibration.cold_start_offset
            top = torch.topk(scores, min(k, scores.shape[1]), dim=1)
            out_indices[point].append(top.indices.cpu().numpy())
            out_scores[point].append(top.values.cpu().numpy())
    return [(np.concatenate(i).astype(np.int64), np.concatenate(s).astype(np.float32))
            for i, s in zip(out_indices, out_scores)]


def make_grid(de_weights: list[float], offsets: list[float], clf_untrained: list[str]) -> list[Calibration]:
    """Every combination, in a fixed order (ties in the selection go to the earliest point)."""
    return [Calibration(w, o, c) for c, w, o in itertools.product(clf_untrained, de_weights, offsets)]


def select(results: list[tuple[Calibration, dict[str, float]]],
           metric: str) -> tuple[Calibration, dict[str, float]]:
    """The grid point with the highest ``metric`` (the first one on ties)."""
    if not results:
        raise ValueError("calibration grid is empty")
    if metric not in results[0][1]:
        raise ValueError(f"metric {metric!r} not among {sorted(results[0][1])}")
    return max(results, key=lambda item: item[1][metric])


def calibrate_run(run_dir: str | os.PathLike, config: CalibrateConfig) -> dict:
    """Search the grid on ``run_dir``'s validation hold-out; write and return the calibration record."""
    if config.metric not in REPORTED_METRICS:
        raise ConfigError(f"metric: {config.metric!r} is not one of {', '.join(REPORTED_METRICS)}")
    run = TrainedRun.open(run_dir, config.checkpoint)
    if run.config.dataset.validation_fraction <= 0:
        raise ConfigError(f"--run: {run.location} has no validation hold-out to calibrate on; train it with "
                          f"--set dataset.validation_fraction=0.05 (or more)")
    started = time.perf_counter()
    scoring = run.scoring_model()
    scoring.heads.clf_untrained = "table"  # the table rows; the grid swaps in the text rows itself
    heads = scoring.head_vectors()
    classifier = heads.clf is not None
    cold = scoring.cold_start
    untrained_text = scoring.untrained_text_vectors() if classifier and len(cold) else None
    rows = run.split.validation_rows
    queries = scoring.query_head_vectors(run.token_cache().arrays("train"), rows)
    grid = make_grid(config.de_weights if classifier else [1.0], config.cold_start_offsets,
                     config.clf_untrained if classifier else ["table"])
    d = scoring.de_dim
    predictions = grid_topk(queries[:, :d], queries[:, d:] if classifier else None, heads.de, heads.clf,
                            untrained_text, cold, grid, config.top_k, device=scoring.device)
    data = run.config.dataset

    def score(indices: np.ndarray, scores: np.ndarray) -> dict:
        metrics = evaluate_predictions(run.dataset, indices[:, :config.top_k], scores[:, :config.top_k],
                                       data.propensity_a, data.propensity_b, split="train", rows=rows,
                                       train_rows=run.split.propensity_rows)
        # how often a cold-start label is ranked first: what the offset trades against the trained labels
        metrics["top1_cold_start"] = round(100 * float(np.isin(indices[:, 0], cold).mean()), 4)
        return metrics

    results = [(point, score(*prediction)) for point, prediction in zip(grid, predictions)]
    best, best_metrics = select(results, config.metric)
    neighbour_results = []
    if any(weight > 0 for weight in config.neighbour_weights):
        # the channel on the best point: its top candidates re-ranked for every weight (the memory is the
        # training points that remain after the hold-out, so no held-out query finds itself)
        settings = run.config.model
        depth = max(config.top_k, settings.neighbour_candidates)
        [(indices, scores)] = grid_topk(queries[:, :d], queries[:, d:] if classifier else None, heads.de,
                                        heads.clf, untrained_text, cold, [best], depth, device=scoring.device)
        memory = training_memory(scoring, run.token_cache().arrays("train"), run.split.train_rows,
                                 run.dataset.label_matrix("train"), run.config.eval.ann)
        candidates = min(settings.neighbour_candidates, depth)
        extra = memory.scores(queries[:, :d], indices[:, :candidates], settings.neighbours,
                              settings.neighbour_temperature)
        neighbour_results = [(dataclasses.replace(best, neighbour_weight=weight),
                              score(*rerank_top(indices, scores, extra, weight, candidates)))
                             for weight in config.neighbour_weights]
        best, best_metrics = select(neighbour_results, config.metric)
    record = {
        "checkpoint": run.checkpoint_name,
        "metric": config.metric,
        "selected": vars(best),
        "validation": best_metrics,
        "validation_points": int(len(rows)),
        "cold_start_labels": int(len(cold)),
        "validation_positives_on_cold_start_labels": round(cold_start_share(run.dataset, rows, cold), 4),
        "grid": [{**vars(point), **metrics} for point, metrics in results],
        "neighbour_grid": [{**vars(point), **metrics} for point, metrics in neighbour_results],
        "seconds": round(time.perf_counter() - started, 1),
    }
    storage.write_json(storage.join(run.location, CALIBRATION_FILE), record)
    return record


def cold_start_share(dataset, rows: np.ndarray, cold_start: np.ndarray) -> float:
    """The fraction of the hold-out's positives that are cold-start labels (how much the offset can
    matter)."""
    truth = dataset.label_matrix("train")[rows]
    if truth.nnz == 0:
        return 0.0
    return float(np.isin(truth.indices, cold_start).mean())


def read_calibration(run_location: str | os.PathLike, checkpoint: str) -> dict | None:
    """The run's ``calibration.json`` selection for the checkpoint named ``checkpoint``, or None when the run
    has none.

    A calibration chosen for another checkpoint is an error rather than silently reused: the scores of a
    different checkpoint need their own choice (rerun ``jobs/calibrate.py``, or export with calibration=off).
    """
    path = storage.join(run_location, CALIBRATION_FILE)
    if not storage.is_file(path):
        return None
    try:
        record = storage.read_json(path)
        chosen, calibrated = record["selected"], record["checkpoint"]
        chosen = {key: {**ADDED_SETTINGS, **chosen}[key] for key in SETTINGS}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"{path}: unreadable calibration ({err!r}); rerun jobs/calibrate.py") from None
    if calibrated != checkpoint:
        raise ConfigError(f"{path}: chosen for {calibrated}, but the export is of {checkpoint}; rerun "
                          f"jobs/calibrate.py --run {run_location} or export with --set calibration=off")
    return chosen
