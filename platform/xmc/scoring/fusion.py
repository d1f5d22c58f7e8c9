"""The fused score of the two heads, and how it folds into one inner product.

A trained model ranks label ``l`` for query ``q`` by::

    score(q, l) = de_weight · cos_DE(q, l) + cos_CLF(q, l) + cold_start_offset · [l has no training positive]

Training fixes neither number well. The two heads are trained by separate losses, so their equal weight at
inference is a convention, not an optimum. Labels that no training query is tagged with ("cold-start"
labels) only ever enter a pool as negatives, so both heads learn to rank them below the labels they saw as
positives; on data where queries are often about such labels that is a label shift, and an additive offset
is the logit adjustment that undoes it (Menon et al., "Long-tail learning via logit adjustment", ICLR 2021).
Both numbers, and ``clf_untrained``, are chosen on a validation hold-out by
:mod:`xmc.evaluation.calibration`; ``docs/notes/wordnet-cold-start.md`` tells the story.

The score folds into one inner product: label vectors ``[de_weight · DE ; CLF ; offset column]`` (the
offset for cold-start labels, 0 otherwise) and query vectors ``[q_DE ; q_CLF ; 1]``. So exact and ANN
search, exported bundles and Serve rank by the calibrated score with no change to the search code. Without
an offset the extra column is left out on both sides.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np


@dataclass(frozen=True)
class Calibration:
    """The fused-score settings of :class:`xmc.models.config.HeadsConfig` that a calibration chooses."""

    de_weight: float = 1.0
    cold_start_offset: float = 0.0
    clf_untrained: str = "table"
    neighbour_weight: float = 0.0


#: The :class:`~xmc.models.config.HeadsConfig` fields a calibration sets (calibration.json's "selected" keys).
SETTINGS = tuple(field.name for field in fields(Calibration))
#: Settings a calibration made before they existed does not name; it chose them as these (the channel off).
ADDED_SETTINGS = {"neighbour_weight": 0.0}


def apply(heads, chosen: dict) -> None:
    """Set a calibration (a mapping with every name of :data:`SETTINGS`) on a ``HeadsConfig``."""
    for name in SETTINGS:
        setattr(heads, name, chosen[name])


def rerank(indices: np.ndarray, scores: np.ndarray, extra: np.ndarray, weight: float
           ) -> tuple[np.ndarray, np.ndarray]:
    """Candidates ``indices`` re-ranked by ``scores + weight · extra`` (a channel scored on the candidates
    only, such as :mod:`xmc.scoring.neighbours`), best first, −1 ids last: ``(indices, scores)``."""
    combined = np.where(indices >= 0, scores + np.float32(weight) * extra, -np.inf).astype(np.float32)
    order = np.argsort(-combined, axis=1, kind="stable")
    return np.take_along_axis(indices, order, axis=1), np.take_along_axis(combined, order, axis=1)


def has_offset_column(cold_start_offset: float) -> bool:
    """Whether label and query vectors carry the offset column (only for a non-zero offset, so a model
    without one keeps the plain ``[DE ; CLF]`` layout)."""
    return cold_start_offset != 0.0


def fold_labels(de: np.ndarray, clf: np.ndarray | None, cold_start: np.ndarray, de_weight: float,
                cold_start_offset: float) -> np.ndarray:
    """``[de_weight · DE ; CLF ; offset column]`` float32 label vectors (the CLF block only with a
    classifier).

    ``cold_start`` holds the ids (row positions of ``de``) of the labels without training positives.
    """
    # written into one output block by block: an index built a chunk at a time holds this beside itself, so
    # each weighted or concatenated copy would add to its peak
    de = np.asarray(de, dtype=np.float32)
    width = de.shape[1] + (clf.shape[1] if clf is not None else 0)
    offset_column = has_offset_column(cold_start_offset)
    out = np.zeros((len(de), width + int(offset_column)), dtype=np.float32)
    out[:, :de.shape[1]] = de
    out[:, :de.shape[1]] *= np.float32(de_weight)
    if clf is not None:
        out[:, de.shape[1]:width] = clf
    if offset_column:
        out[np.asarray(cold_start, dtype=np.int64), width] = cold_start_offset
    return out


def fold_queries(queries: np.ndarray, cold_start_offset: float) -> np.ndarray:
    """Queries ``[q_DE ; q_CLF]`` with the constant 1 that meets the labels' offset column, when there is
    one."""
    queries = np.asarray(queries, dtype=np.float32)
    if not has_offset_column(cold_start_offset):
        return queries
    return np.ascontiguousarray(np.concatenate([queries, np.ones((len(queries), 1), np.float32)], axis=1))


def score_formula(heads, classifier: bool) -> str:
    """A one-line description of what an inner product of folded vectors computes (a bundle's manifest)."""
    de = "cos_DE" if heads.de_weight == 1.0 else f"{heads.de_weight:g} * cos_DE"
    formula = f"fused: {de} + cos_CLF" if classifier else de
    if has_offset_column(heads.cold_start_offset):
        formula += f" + {heads.cold_start_offset:g} * [label without training positives]"
    if heads.neighbour_weight:
        formula += (f", its top {heads.neighbour_candidates} re-ranked + {heads.neighbour_weight:g} * "
                    f"[weight of the {heads.neighbours} nearest training queries tagged with the label]")
    return formula
