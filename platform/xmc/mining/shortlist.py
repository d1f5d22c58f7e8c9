"""Hard-negative shortlists: for each training query, the labels the current model ranks highest that are
not among its positives."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from xmc.mining.ann import sharded_search


def remove_positives(candidates: np.ndarray, positives: sp.csr_matrix, rows: np.ndarray,
                     size: int) -> np.ndarray:
    """Keep, per row, the first ``size`` candidates that are not positives of that row (−1 padded)."""
    num_labels = positives.shape[1]
    pos = positives[rows].tocoo()
    own = np.unique(pos.row.astype(np.int64) * num_labels + pos.col)
    owner = np.repeat(np.arange(len(rows), dtype=np.int64), candidates.shape[1]).reshape(candidates.shape)
    keys = owner * num_labels + np.maximum(candidates, 0)
    valid = (candidates >= 0) & ~np.isin(keys, own)
    # stable partition: valid candidates first, in their ranked order
    order = np.argsort(~valid, axis=1, kind="stable")
    kept = np.take_along_axis(np.where(valid, candidates, -1), order, axis=1)[:, :size]
    if kept.shape[1] < size:
        kept = np.pad(kept, ((0, 0), (0, size - kept.shape[1])), constant_values=-1)
    return kept.astype(np.int32)


def compute_shortlists(query_vectors: np.ndarray, index, label_ids: np.ndarray, num_labels: int,
                       positives: sp.csr_matrix, rows: np.ndarray, size: int, device=None) -> np.ndarray:
    """``[len(rows), size]`` int32 hard-negative candidates for training queries ``rows``.

    ``index`` holds this worker's labels ``label_ids`` of ``num_labels`` (:func:`xmc.mining.ann.
    build_shard_index`; a collective: :func:`xmc.mining.ann.sharded_search`). Searches ``size`` plus a margin
    for the positives that will be removed (up to 32 per query).
    """
    max_positives = int(np.diff(positives.indptr).max()) if positives.nnz else 0
    _, candidates = sharded_search(query_vectors, index, label_ids, num_labels, size + min(max_positives, 32),
                                   device=device)
    return remove_positives(candidates, positives, rows, size)
