"""Score predictions on a split of a prepared dataset, with its filters and propensities; and a model's
three predictors (DE only, classifier only, fused) at once."""

from __future__ import annotations

import numpy as np

from xmc.data.config import DatasetConfig
from xmc.data.dataset import PreparedDataset
from xmc.evaluation.config import EvalConfig
from xmc.evaluation.metrics import REPORTED_METRICS, compute_metrics
from xmc.evaluation.segments import label_segments, segment_metrics
from xmc.mining.ann import build_shard_index, sharded_search
from xmc.scoring import fusion
from xmc.scoring.model import ScoringModel, TokenArrays
from xmc.scoring.neighbours import NeighbourMemory

Prediction = tuple[np.ndarray, np.ndarray]  # (indices int64 [n, k], scores float32 [n, k])


def evaluate_predictions(dataset: PreparedDataset, indices: np.ndarray, scores: np.ndarray,
                         propensity_a: float, propensity_b: float, split: str = "test",
                         rows: np.ndarray | None = None, train_rows: np.ndarray | None = None,
                         segments: bool = False) -> dict:
    """The metrics.json mapping (percentages) for a top-k prediction on ``split``.

    Reciprocal pairs of the split (``filter_labels_<split>.txt``) are removed before the top-k cut and
    propensities come from the train label frequencies. ``rows`` restricts the split (a validation hold-out
    of the training points); ``train_rows`` restricts the points the propensities are counted on (the
    training points that remain after the hold-out). ``segments`` adds the metrics per label segment
    (:mod:`xmc.evaluation.segments`, the segments counted on the same training points) under "segments".
    """
    truth = dataset.label_matrix(split)
    exclude = dataset.filter_matrix(split)
    if rows is not None:
        truth = truth[rows]
        exclude = exclude[rows] if exclude is not None else None
    inv_prop = dataset.inverse_propensity(propensity_a, propensity_b, train_rows)
    metrics = compute_metrics(indices, scores, truth, inv_prop, exclude=exclude)
    keys = list(REPORTED_METRICS) + (["R@100"] if "R@100" in metrics else [])
    out: dict = {key: round(metrics[key], 4) for key in keys}
    if segments:
        groups = label_segments(dataset.train_label_counts(train_rows))
        out["segments"] = segment_metrics(indices, scores, truth, inv_prop, groups, exclude=exclude)
    return out


def evaluate_model(scoring: ScoringModel, dataset: PreparedDataset, queries: TokenArrays, split: str,
                   rows: np.ndarray | None, config: EvalConfig, data: DatasetConfig,
                   train_rows: np.ndarray | None = None, seed: int = 0,
                   neighbours: NeighbourMemory | None = None
                   ) -> tuple[dict[str, dict[str, float]], Prediction] | None:
    """Metrics of the DE-only, classifier-only and fused predictors of ``scoring`` on ``rows`` of ``split``
    (all of it for None), and the fused prediction.

    The fused score is ``de_weight · cos_DE + cos_CLF`` plus ``cold_start_offset`` for labels without
    training positives (:mod:`xmc.scoring.fusion`); with ``neighbours`` (the training queries' memory, given
    to rank 0) and ``model.neighbour_weight`` above 0, its top candidates are re-ranked by the query-neighbour
    channel (:mod:`xmc.scoring.neighbours`), as a bundle ranks them. A model without a classifier reports a
    fused entry only when it has an offset or that channel. Every worker calls it (a collective): each indexes
    the labels it holds
    (:attr:`ScoringModel.own_labels`) and the per-worker top-k are merged; rank 0 gets the result, the others
    None.

    What a worker holds of its labels at once is bounded: their DE vectors, encoded once, and one index at a
    time, each built a chunk at a time (the fused one from the DE vectors and the classifier's rows). The DE
    index is the last one built and stays with ``scoring`` (:meth:`ScoringModel.own_de_index`), so that a
    mining refresh right after this evaluation searches it instead of encoding the labels again.
    """
    de = scoring.own_de_label_vectors()
    query_vectors = scoring.query_head_vectors(queries, rows)
    d, own, device, num_labels = scoring.de_dim, scoring.own_labels, scoring.device, scoring.num_labels

    def top(queries: np.ndarray, labels, k: int = config.top_k) -> Prediction:
        index = build_shard_index(labels, num_labels, config.ann, seed, device)
        scores, indices = sharded_search(queries, index, own, num_labels, k, device)
        return indices, scores

    def score(prediction: Prediction) -> dict[str, float]:
        return evaluate_predictions(dataset, *prediction, data.propensity_a, data.propensity_b, split=split,
                                    rows=rows, train_rows=train_rows)

    predictions = {}
    heads = scoring.heads
    # the channel re-ranks the fused top neighbour_candidates, as a bundle does, whatever top_k is reported
    # (decided by the settings alone: every worker searches as deep)
    channel = heads.neighbour_weight > 0
    depth = max(config.top_k, heads.neighbour_candidates) if channel else config.top_k
    fused_differs = scoring.has_classifier or fusion.has_offset_column(heads.cold_start_offset) or channel
    if fused_differs or heads.de_weight != 1.0:
        fused = top(fusion.fold_queries(query_vectors, heads.cold_start_offset), scoring.own_label_source(de),
                    depth)
        if fused_differs:
            predictions["fused"] = fused
    if scoring.has_classifier:
        predictions["clf"] = top(query_vectors[:, d:], scoring.own_classifier_source())
    de_index = scoring.own_de_index(config.ann, seed, vectors=de)
    del de
    scores, indices = sharded_search(query_vectors[:, :d], de_index, own, num_labels, config.top_k, device)
    predictions["de"] = (indices, scores)
    if not (fused_differs or heads.de_weight != 1.0):
        fused = predictions["de"]  # the folded vectors would be the DE vectors themselves
    if scoring.rank != 0:
        return None
    if channel:
        if neighbours is None:
            raise ValueError("model.neighbour_weight is above 0: evaluation needs the training queries' "
                             "memory (xmc.scoring.neighbours.training_memory)")
        indices, scores = neighbours.rerank(*fused, query_vectors[:, :d], heads)
        fused = predictions["fused"] = indices[:, :config.top_k], scores[:, :config.top_k]
    order = [name for name in ("de", "clf", "fused") if name in predictions]
    return {name: score(predictions[name]) for name in order}, fused
