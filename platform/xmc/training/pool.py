"""The label pool of a training step (UniDEC's "pick some labels" reduction), as pure numpy.

The loss of a step never looks at all L labels: it scores the batch's queries against a pool of a few
hundred or thousand labels built from

1. ``k`` sampled positives of every query (``"all"`` = every positive; sampling uniform or weighted by
   inverse propensity, which favours tail labels), the most frequently sampled first if the pool is capped;
2. hard negatives: ``n`` labels drawn per query from its ANN shortlist (labels the current model ranks
   high but which are not positives), most frequent first;
3. the remaining (unsampled) positives of the batch's queries, as in-batch fill.

Sampled positives of one query are in-batch negatives of the others. Targets are built from *all*
positives of each query, so a label in the pool is never a negative for a query it is relevant to; a
query with no positive left in the pool is masked out of the loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from xmc.training.config import PoolConfig


@dataclass
class LabelPool:
    """A step's pool: ``label_ids`` [P] and bool ``targets`` [B, P]; ``row_mask`` [B] marks usable rows."""

    label_ids: np.ndarray
    targets: np.ndarray
    row_mask: np.ndarray


def _rows_of(matrix: sp.csr_matrix, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flattened (row position in ``rows``, label) pairs of the selected CSR rows."""
    starts, ends = matrix.indptr[rows], matrix.indptr[rows + 1]
    lengths = ends - starts
    owner = np.repeat(np.arange(len(rows)), lengths)
    offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return owner, matrix.indices[np.repeat(starts, lengths) + offsets]


def sample_per_row(owner: np.ndarray, values: np.ndarray, k: int | None, rng: np.random.Generator,
                   weights: np.ndarray | None = None) -> np.ndarray:
    """A boolean mask keeping up to ``k`` entries of each row, without replacement.

    Entries are grouped by ``owner`` (row id); with ``weights`` the draw is proportional to them (Gumbel
    top-k, i.e. successive sampling without replacement). ``k=None`` keeps everything.
    """
    if k is None or owner.size == 0:
        return np.ones(owner.size, dtype=bool)
    keys = rng.gumbel(size=owner.size)
    if weights is not None:
        keys = keys + np.log(np.maximum(weights, 1e-30))
    order = np.lexsort((-keys, owner))
    sorted_owner = owner[order]
    first = np.searchsorted(sorted_owner, sorted_owner, side="left")
    rank = np.arange(order.size) - first
    keep = np.zeros(owner.size, dtype=bool)
    keep[order[rank < k]] = True
    return keep


def _by_frequency(labels: np.ndarray, rng: np.random.Generator,
                  exclude: np.ndarray | None = None) -> np.ndarray:
    """Unique labels, most frequent first (random order among ties), optionally without ``exclude``."""
    if labels.size == 0:
        return labels
    unique, counts = np.unique(labels, return_counts=True)
    if exclude is not None and exclude.size:
        keep = ~np.isin(unique, exclude)
        unique, counts = unique[keep], counts[keep]
    order = np.lexsort((rng.random(unique.size), -counts))
    return unique[order]


def build_label_pool(batch: np.ndarray, positives: sp.csr_matrix, config: PoolConfig,
                     rng: np.random.Generator, shortlists: np.ndarray | None = None,
                     label_weights: np.ndarray | None = None) -> LabelPool:
    """Build the pool of one step for the training queries ``batch``.

    Args:
        batch: row ids (into ``positives``) of the batch's queries.
        positives: train label matrix (CSR, queries × labels).
        config: pool settings.
        rng: the step's random generator (seeded from (seed, epoch, step), so every worker builds the same
            pool).
        shortlists: ``[N, S]`` label ids from the ANN index per training query (−1 padded), or None.
        label_weights: inverse propensities, needed for ``positive_sampling="inverse_propensity"``.
    """
    batch = np.asarray(batch, dtype=np.int64)
    owner, labels = _rows_of(positives, batch)
    k = None if config.positives == "all" else int(config.positives)
    weights = None
    if config.positive_sampling == "inverse_propensity":
        if label_weights is None:
            raise ValueError("inverse_propensity sampling needs label_weights")
        weights = label_weights[labels]
    sampled = sample_per_row(owner, labels, k, rng, weights)
    pool = _by_frequency(labels[sampled], rng)[: config.max_size]

    if shortlists is not None and config.hard_negatives > 0 and pool.size < config.max_size:
        candidates = shortlists[batch]
        cand_owner = np.repeat(np.arange(len(batch)), candidates.shape[1])
        cand = candidates.ravel()
        # drop padding and each query's own positives: a hard negative must be a negative
        pair = cand_owner.astype(np.int64) * positives.shape[1] + np.maximum(cand, 0)
        own = owner.astype(np.int64) * positives.shape[1] + labels
        valid = (cand >= 0) & ~np.isin(pair, own)
        drawn = sample_per_row(cand_owner[valid], cand[valid], config.hard_negatives, rng)
        negatives = _by_frequency(cand[valid][drawn], rng, exclude=pool)
        pool = np.concatenate([pool, negatives[: config.max_size - pool.size]])

    if config.fill_with_batch_positives and pool.size < config.max_size:
        rest = _by_frequency(labels, rng, exclude=pool)
        pool = np.concatenate([pool, rest[: config.max_size - pool.size]])

    pool = pool.astype(np.int64)
    targets = np.asarray(positives[batch][:, pool].todense(), dtype=bool) if pool.size else \
        np.zeros((len(batch), 0), dtype=bool)
    return LabelPool(label_ids=pool, targets=targets, row_mask=targets.any(axis=1))
