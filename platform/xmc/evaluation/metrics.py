"""XMC ranking metrics, computed the way pyxclib (and the papers' tables) compute them.

Inputs are a top-k prediction (``indices`` n × k, −1 = no prediction, with ``scores``), the ground truth
as an n × L scipy CSR matrix (non-zero = relevant), inverse propensities (one per label) and optionally the
reciprocal pairs to ignore (an n × L CSR matrix of "test row, label" pairs).

Definitions (all averaged over every test row; a row with no relevant label scores 0, as in pyxclib):

- P@k = |top_k ∩ Y| / k
- nDCG@k = DCG@k / IDCG@min(k, |Y|), DCG@k = sum_r hit_r / log2(r + 1)
- PSP@k = mean(sum_{top_k} hit · w) / mean(sum of the k largest w over Y): normalised by the best
  achievable, so a perfect ranking scores 100 (pyxclib ``psprecision``; the un-normalised repository
  formula can exceed 100)
- PSnDCG@k = mean(PSDCG@k / IDCG) / mean(best PSDCG@k / IDCG), with the count-based IDCG of nDCG
- R@k = |top_k ∩ Y| / |Y|

Reciprocal pairs are removed *before* the top-k cut (the pitfall of filtering after truncation is that a
row with a filtered label in its top 5 gets only 4 predictions). Everything runs on fixed-size row chunks,
so memory stays bounded for millions of test points.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

#: The keys of metrics.json, in order; "R@100" is added when predictions have at least 100 columns.
REPORTED_METRICS = ("P@1", "P@3", "P@5", "nDCG@1", "nDCG@3", "nDCG@5", "PSP@1", "PSP@3", "PSP@5",
                    "PSnDCG@5", "R@10")

_ROW_CHUNK = 65536


def _pair_keys(rows: np.ndarray, cols: np.ndarray, num_labels: int) -> np.ndarray:
    return rows.astype(np.int64) * num_labels + cols.astype(np.int64)


def _sorted_keys(matrix: sp.csr_matrix) -> np.ndarray:
    coo = matrix.tocoo()
    keep = coo.data != 0
    return np.unique(_pair_keys(coo.row[keep], coo.col[keep], matrix.shape[1]))


def _member(keys: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    if sorted_keys.size == 0:
        return np.zeros(keys.shape, dtype=bool)
    pos = np.searchsorted(sorted_keys, keys)
    pos = np.minimum(pos, sorted_keys.size - 1)
    return sorted_keys[pos] == keys


def rank_predictions(indices: np.ndarray, scores: np.ndarray, k: int, num_labels: int,
                     exclude: sp.csr_matrix | None = None, row_offset: int = 0,
                     _exclude_keys: np.ndarray | None = None) -> np.ndarray:
    """Top-``k`` label ids per row by descending score, after dropping −1 entries and excluded pairs.

    Rows with fewer than ``k`` usable predictions are padded with −1. Ties keep the input order.
    ``exclude`` (or its pre-sorted keys) uses absolute row numbers; ``row_offset`` is the absolute row of
    ``indices[0]``.
    """
    indices = np.asarray(indices, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    n, width = indices.shape
    drop = (indices < 0) | (indices >= num_labels)
    if exclude is not None or _exclude_keys is not None:
        keys = _exclude_keys if _exclude_keys is not None else _sorted_keys(exclude)
        rows = np.arange(row_offset, row_offset + n)[:, None]
        drop |= _member(_pair_keys(rows, np.where(drop, 0, indices), num_labels), keys) & ~drop
    order = np.lexsort((-np.where(drop, -np.inf, scores), drop), axis=1)
    ranked = np.take_along_axis(indices, order, axis=1)
    ranked[np.take_along_axis(drop, order, axis=1)] = -1
    if width >= k:
        return ranked[:, :k]
    return np.pad(ranked, ((0, 0), (0, k - width)), constant_values=-1)


def _best_weights(truth: sp.csr_matrix, inv_prop: np.ndarray, k: int) -> np.ndarray:
    """Per row, the ``k`` largest inverse propensities among its relevant labels (0-padded), descending.

    ``truth`` must hold no explicit zeros.
    """
    n = truth.shape[0]
    lengths = np.diff(truth.indptr)
    rows = np.repeat(np.arange(n), lengths)
    weights = inv_prop[truth.indices]
    order = np.lexsort((-weights, rows))
    rank = np.arange(order.size) - np.repeat(truth.indptr[:-1], lengths)
    best = np.zeros((n, k), dtype=np.float64)
    keep = rank < k
    best[rows[order][keep], rank[keep]] = weights[order][keep]
    return best


def compute_metrics(indices: np.ndarray, scores: np.ndarray, truth: sp.csr_matrix, inv_prop: np.ndarray,
                    exclude: sp.csr_matrix | None = None, precision_ks: Sequence[int] = (1, 3, 5),
                    ndcg_ks: Sequence[int] = (1, 3, 5), psp_ks: Sequence[int] = (1, 3, 5),
                    psndcg_ks: Sequence[int] = (5,),
                    recall_ks: Sequence[int] | None = None) -> dict[str, float]:
    """All ranking metrics of one prediction, in percent.

    Args:
        indices: n × w label ids per test row, −1 for "no prediction"; need not be sorted.
        scores: n × w scores (higher = more relevant); ranks ``indices`` within each row.
        truth: n × L CSR matrix, non-zero where a label is relevant (relevance values are binarised).
        inv_prop: L inverse propensities (:func:`xmc.data.propensity.inverse_propensity`).
        exclude: optional n × L CSR matrix of (row, label) pairs removed before the top-k cut.
        recall_ks: defaults to (10,) plus 100 when ``w >= 100``.
    Returns:
        ``{"P@1": ..., "nDCG@1": ..., "PSP@1": ..., "PSnDCG@5": ..., "R@10": ...}`` in percent.
    """
    indices = np.asarray(indices)
    scores = np.asarray(scores)
    if indices.ndim != 2 or indices.shape != scores.shape:
        raise ValueError(f"indices and scores must be 2-D arrays of the same shape, got "
                         f"{indices.shape} and {scores.shape}")
    truth = sp.csr_matrix(truth, copy=True)
    truth.sum_duplicates()
    truth.eliminate_zeros()
    n, num_labels = truth.shape
    if indices.shape[0] != n:
        raise ValueError(f"predictions have {indices.shape[0]} rows but the ground truth has {n}")
    inv_prop = np.asarray(inv_prop, dtype=np.float64)
    if inv_prop.shape != (num_labels,):
        raise ValueError(f"inv_prop must have one value per label ({num_labels}), got {inv_prop.shape}")
    if recall_ks is None:
        recall_ks = (10, 100) if indices.shape[1] >= 100 else (10,)
    k_max = max([*precision_ks, *ndcg_ks, *psp_ks, *psndcg_ks, *recall_ks])

    truth_keys = _sorted_keys(truth)
    exclude_keys = _sorted_keys(sp.csr_matrix(exclude)) if exclude is not None else None
    num_relevant = np.diff(truth.indptr).astype(np.int64)
    discount = 1.0 / np.log2(np.arange(k_max) + 2.0)
    ideal_dcg = np.concatenate([[np.inf], np.cumsum(discount)])  # ideal_dcg[m] for m relevant, m <= k_max
    best = _best_weights(truth, inv_prop, k_max)

    totals: dict[str, float] = {}

    def add(name: str, per_row: np.ndarray) -> None:
        totals[name] = totals.get(name, 0.0) + float(per_row.sum())

    for start in range(0, n, _ROW_CHUNK):
        stop = min(start + _ROW_CHUNK, n)
        ranked = rank_predictions(indices[start:stop], scores[start:stop], k_max, num_labels,
                                  row_offset=start, _exclude_keys=exclude_keys)
        valid = ranked >= 0
        rows = np.arange(start, stop)[:, None]
        hits = (_member(_pair_keys(rows, np.where(valid, ranked, 0), num_labels), truth_keys) & valid)
        hits = hits.astype(np.float64)
        weighted = hits * inv_prop[np.where(valid, ranked, 0)]
        rel = num_relevant[start:stop]
        chunk_best = best[start:stop]
        for k in set(ndcg_ks) | set(psndcg_ks):
            idcg = ideal_dcg[np.minimum(rel, k)]  # inf for rows with no relevant label -> ratio 0
            if k in ndcg_ks:
                add(f"nDCG@{k}", (hits[:, :k] @ discount[:k]) / idcg)
            if k in psndcg_ks:
                add(f"_psdcg@{k}", (weighted[:, :k] @ discount[:k]) / idcg)
                add(f"_psdcg_best@{k}", (chunk_best[:, :k] @ discount[:k]) / idcg)
        for k in precision_ks:
            add(f"P@{k}", hits[:, :k].sum(axis=1) / k)
        for k in psp_ks:
            add(f"_psp@{k}", weighted[:, :k].sum(axis=1))
            add(f"_psp_best@{k}", chunk_best[:, :k].sum(axis=1))
        for k in recall_ks:
            add(f"R@{k}", hits[:, :k].sum(axis=1) / np.maximum(rel, 1))

    def ratio(num: str, den: str) -> float:
        return 100.0 * totals[num] / totals[den] if totals.get(den, 0.0) > 0 else 0.0

    metrics: dict[str, float] = {}
    for k in precision_ks:
        metrics[f"P@{k}"] = 100.0 * totals.get(f"P@{k}", 0.0) / max(n, 1)
    for k in ndcg_ks:
        metrics[f"nDCG@{k}"] = 100.0 * totals.get(f"nDCG@{k}", 0.0) / max(n, 1)
    for k in psp_ks:
        metrics[f"PSP@{k}"] = ratio(f"_psp@{k}", f"_psp_best@{k}")
    for k in psndcg_ks:
        metrics[f"PSnDCG@{k}"] = ratio(f"_psdcg@{k}", f"_psdcg_best@{k}")
    for k in recall_ks:
        metrics[f"R@{k}"] = 100.0 * totals.get(f"R@{k}", 0.0) / max(n, 1)
    return metrics
