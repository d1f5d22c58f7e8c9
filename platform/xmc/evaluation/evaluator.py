"""Score a prediction on a split of a prepared dataset, with its filters and propensities."""

from __future__ import annotations

import numpy as np

from xmc.data.dataset import PreparedDataset
from xmc.evaluation.metrics import REPORTED_METRICS, compute_metrics


def evaluate_predictions(dataset: PreparedDataset, indices: np.ndarray, scores: np.ndarray,
                         propensity_a: float, propensity_b: float, split: str = "test",
                         rows: np.ndarray | None = None, train_rows: np.ndarray | None = None) -> dict[str, float]:
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
