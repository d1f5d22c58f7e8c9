"""Score predictions on a split of a prepared dataset, with its filters and propensities; and a model's
three predictors (DE only, classifier only, fused) at once."""

from __future__ import annotations

import numpy as np

from xmc.data.config import DatasetConfig
from xmc.data.dataset import PreparedDataset
from xmc.evaluation.config import EvalConfig
from xmc.evaluation.metrics import REPORTED_METRICS, compute_metrics
from xmc.evaluation.retrieval import sharded_predict_topk
from xmc.scoring import fusion
from xmc.scoring.model import ScoringModel, TokenArrays

Prediction = tuple[np.ndarray, np.ndarray]  # (indices int64 [n, k], scores float32 [n, k])


def evaluate_predictions(dataset: PreparedDataset, indices: np.ndarray, scores: np.ndarray,
                         propensity_a: float, propensity_b: float, split: str = "test",
                         rows: np.ndarray | None = None,
                         train_rows: np.ndarray | None = None) -> dict[str, float]:
    """The metrics.json mapping (percentages) for a top-k prediction on ``split``.

    Reciprocal pairs of the split (``filter_labels_<split>.txt``) are removed before the top-k cut and
    propensities come from the train label frequencies. ``rows`` restricts the split (a validation hold-out
    of the training points); ``train_rows`` restricts the points the propensities are counted on (the
    training points that remain after the hold-out).
    """
    truth = dataset.label_matrix(split)
    exclude = dataset.filter_matrix(split)
    if rows is not None:
        truth = truth[rows]
        exclude = exclude[rows] if exclude is not None else None
    inv_prop = dataset.inverse_propensity(propensity_a, propensity_b, train_rows)
    metrics = compute_metrics(indices, scores, truth, inv_prop, exclude=exclude)
    keys = list(REPORTED_METRICS) + (["R@100"] if "R@100" in metrics else [])
    return {key: round(metrics[key], 4) for key in keys}


def evaluate_model(scoring: ScoringModel, dataset: PreparedDataset, queries: TokenArrays, split: str,
                   rows: np.ndarray | None, config: EvalConfig, data: DatasetConfig,
                   train_rows: np.ndarray | None = None
                   ) -> tuple[dict[str, dict[str, float]], Prediction] | None:
    """Metrics of the DE-only, classifier-only and fused predictors of ``scoring`` on ``rows`` of ``split``
    (all of it for None), and the fused prediction.

    The fused score is ``de_weight · cos_DE + cos_CLF`` plus ``cold_start_offset`` for labels without
    training positives (:mod:`xmc.scoring.fusion`). A model without a classifier reports a fused entry only
    when it has an offset. Every worker calls it (a collective): each indexes the labels it holds
    (:attr:`ScoringModel.own_labels`) and the per-worker top-k are merged; rank 0 gets the result, the others
    None.
    """
    heads = scoring.own_head_vectors()
    query_vectors = scoring.query_head_vectors(queries, rows)
    d, own, device = scoring.de_dim, scoring.own_labels, scoring.device

    def top(queries: np.ndarray, labels: np.ndarray) -> Prediction:
        return sharded_predict_topk(queries, labels, own, scoring.num_labels, config, device)

    def score(prediction: Prediction) -> dict[str, float]:
        return evaluate_predictions(dataset, *prediction, data.propensity_a, data.propensity_b, split=split,
                                    rows=rows, train_rows=train_rows)

    predictions = {"de": top(query_vectors[:, :d], heads.de)}
    if heads.clf is not None:
        predictions["clf"] = top(query_vectors[:, d:], heads.clf)
    offset = scoring.heads.cold_start_offset
    fused = top(fusion.fold_queries(query_vectors, offset), scoring.own_label_vectors(heads))
    if heads.clf is not None or fusion.has_offset_column(offset):
        predictions["fused"] = fused
    if scoring.rank != 0:
        return None
    return {name: score(prediction) for name, prediction in predictions.items()}, fused
