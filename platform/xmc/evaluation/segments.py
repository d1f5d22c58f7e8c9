"""Metrics per segment of the label set: where a model's quality comes from.

A single P@1 hides whether a model is good at the labels it saw often in training or at those it never saw.
The segments are defined by the training positives of each label, counted on the points a model trained on:

- ``seen``: labels with at least one training positive; ``unseen``: the others (the cold-start labels, which
  only their text can rank);
- ``head``: the most frequent labels that together hold ``head_share`` of the training positives;
  ``tail``: the other seen labels.

A segment's metrics are those of the same predictions against the segment's positives alone, on the points
that have at least one of them: a correct answer outside the segment counts as a miss there, so the
segments of one prediction are comparable with each other and across models. Nothing here chooses anything;
``jobs/evaluate.py --segments`` reports them, on the validation hold-out or the test split alike.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from xmc.evaluation.metrics import compute_metrics

SEGMENTS = ("seen", "unseen", "head", "tail")


def label_segments(train_counts: np.ndarray, head_share: float = 0.5) -> dict[str, np.ndarray]:
    """Label ids of each of :data:`SEGMENTS`, from each label's count of training positives."""
    counts = np.asarray(train_counts, dtype=np.int64)
    seen = np.flatnonzero(counts > 0)
    order = seen[np.argsort(-counts[seen], kind="stable")]
    cumulative = np.cumsum(counts[order])
    head_count = int(np.searchsorted(cumulative, head_share * cumulative[-1]) + 1) if len(order) else 0
    head = np.sort(order[:head_count])
    return {"seen": seen, "unseen": np.flatnonzero(counts == 0), "head": head,
            "tail": np.setdiff1d(seen, head)}


def segment_metrics(indices: np.ndarray, scores: np.ndarray, truth: sp.csr_matrix, inv_prop: np.ndarray,
                    segments: dict[str, np.ndarray], exclude: sp.csr_matrix | None = None
                    ) -> dict[str, dict[str, float]]:
    """The metrics of a prediction on each segment (see the module docstring), with its ``labels``, the
    ``points`` that have a positive in it and its share of all positives (``positives_share``, percent)."""
    truth = sp.csr_matrix(truth)
    total = max(int(truth.nnz), 1)
    out = {}
    for name, labels in segments.items():
        keep = np.zeros(truth.shape[1], dtype=bool)
        keep[np.asarray(labels, dtype=np.int64)] = True
        part = truth.multiply(keep[None, :]).tocsr()
        part.eliminate_zeros()
        rows = np.flatnonzero(np.diff(part.indptr) > 0)
        metrics = {"labels": int(keep.sum()), "points": int(len(rows)),
                   "positives_share": round(100 * part.nnz / total, 2)}
        if len(rows):
            found = compute_metrics(indices[rows], scores[rows], part[rows], inv_prop,
                                    exclude=None if exclude is None else exclude[rows])
            metrics.update({key: round(value, 4) for key, value in found.items()})
        out[name] = metrics
    return out
