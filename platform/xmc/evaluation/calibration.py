"""Post-hoc score calibration, chosen on the validation hold-out (never on the test split).

A trained model ranks label ``l`` for query ``q`` by::

    score(q, l) = de_weight · cos_DE(q, l) + cos_CLF(q, l) + cold_start_offset · [l has no training positive]

Training fixes neither number well. The two heads are trained by separate losses, so their equal weight at
inference is a convention, not an optimum. Labels that no training query is tagged with ("cold-start" labels)
only ever enter a pool as negatives, so both heads learn to rank them below the labels they saw as positives.
On data where queries often are about such labels that is a label shift: on wordnet-reverse-dictionary 60% of
test positives (and 61% of the positives of a 5% validation hold-out) have no training query. An additive
offset for those labels is the logit adjustment that undoes the shift (Menon et al., "Long-tail learning via
logit adjustment", ICLR 2021), with its size measured instead of assumed.

Both numbers (and ``model.clf_untrained``) are picked by grid search on the validation hold-out of a run
trained with ``dataset.validation_fraction > 0``: its held-out queries see the same cold-start situation the
test split does, and choosing there keeps the test split untouched (``jobs/calibrate.py``).

The offset folds into the label index as one extra column (``offset`` for cold-start labels, 0 otherwise)
with a constant 1 appended to every query, so exact and ANN inner-product search, exported bundles and
Serve all rank by the calibrated score with no change to the search code.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, fields

import numpy as np
import torch


@dataclass(frozen=True)
class Calibration:
    """One point of the grid: the settings of :class:`xmc.models.config.HeadsConfig` it stands for."""

    de_weight: float = 1.0
    cold_start_offset: float = 0.0
    clf_untrained: str = "table"


#: The :class:`xmc.models.config.HeadsConfig` fields a calibration sets (the keys of calibration.json's "selected").
SETTINGS = tuple(field.name for field in fields(Calibration))


def apply(heads, chosen: dict) -> None:
    """Set a calibration (a mapping with every name of :data:`SETTINGS`) on a ``HeadsConfig``."""
    for name in SETTINGS:
        setattr(heads, name, chosen[name])


def has_offset_column(cold_start_offset: float) -> bool:
    """Whether label and query vectors carry the offset column (only when the offset is non-zero, so a
    model without one keeps the plain ``[DE ; CLF]`` layout)."""
    return cold_start_offset != 0.0


def label_vectors(de: np.ndarray, clf: np.ndarray | None, cold_start: np.ndarray, de_weight: float,
                  cold_start_offset: float) -> np.ndarray:
    """``[de_weight · DE ; CLF ; offset column]`` float32 label vectors (the CLF block only with a classifier).

    ``cold_start`` holds the ids of the labels without training positives.
    """
    blocks = [np.asarray(de, dtype=np.float32) * np.float32(de_weight)]
    if clf is not None:
        blocks.append(np.asarray(clf, dtype=np.float32))
    if has_offset_column(cold_start_offset):
        column = np.zeros((len(de), 1), dtype=np.float32)
        column[np.asarray(cold_start, dtype=np.int64)] = cold_start_offset
        blocks.append(column)
    return np.ascontiguousarray(np.concatenate(blocks, axis=1))


def query_vectors(queries: np.ndarray, cold_start_offset: float) -> np.ndarray:
    """Queries ``[q_DE ; q_CLF]`` with the constant 1 that meets the labels' offset column, when there is one."""
    queries = np.asarray(queries, dtype=np.float32)
    if not has_offset_column(cold_start_offset):
        return queries
    return np.ascontiguousarray(np.concatenate([queries, np.ones((len(queries), 1), np.float32)], axis=1))


def grid_topk(query_de: np.ndarray, query_clf: np.ndarray | None, labels_de: np.ndarray,
              labels_clf_table: np.ndarray | None, untrained_text_clf: np.ndarray | None, cold_start: np.ndarray,
              grid: list[Calibration], k: int, chunk: int = 512, device: torch.device | None = None
              ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Exact top-``k`` ``(indices, scores)`` of every grid point, from one pass of matrix products.

    The per-head score matrices of a chunk of queries are computed once and recombined for each grid point,
    so a grid of G points costs one scoring pass plus G cheap combinations instead of G searches.
    ``untrained_text_clf`` holds the classifier-side text vectors of the ``cold_start`` labels (rows in the
    same order), used by the points with ``clf_untrained == "label_text"``; ``labels_clf_table`` are the
    table rows of all labels.
    """
    device = device or torch.device("cpu")
    de = torch.from_numpy(np.asarray(labels_de, dtype=np.float32)).to(device)
    table = None if labels_clf_table is None else torch.from_numpy(
        np.asarray(labels_clf_table, dtype=np.float32)).to(device)
    text = None if untrained_text_clf is None else torch.from_numpy(
        np.asarray(untrained_text_clf, dtype=np.float32)).to(device)
    cold = torch.from_numpy(np.asarray(cold_start, dtype=np.int64)).to(device)
    out_indices = [[] for _ in grid]
    out_scores = [[] for _ in grid]
    for start in range(0, len(query_de), chunk):
        q_de = torch.from_numpy(np.asarray(query_de[start:start + chunk], dtype=np.float32)).to(device)
        s_de = q_de @ de.T
        s_table = s_text = None
        if table is not None:
            q_clf = torch.from_numpy(np.asarray(query_clf[start:start + chunk], dtype=np.float32)).to(device)
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


def select(results: list[tuple[Calibration, dict[str, float]]], metric: str) -> tuple[Calibration, dict[str, float]]:
    """The grid point with the highest ``metric`` (the first one on ties)."""
    if not results:
        raise ValueError("calibration grid is empty")
    if metric not in results[0][1]:
        raise ValueError(f"metric {metric!r} not among {sorted(results[0][1])}")
    return max(results, key=lambda item: item[1][metric])
