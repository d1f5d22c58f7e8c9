"""The order in which training queries are visited: random batches, or batches of clustered queries.

A :class:`BatchPlan` is one epoch's sequence of batches (stored flat, with offsets, so it checkpoints as two
arrays). Every worker builds the same plan from the same seed and takes its own slice of each global
batch (:func:`xmc.distributed.equal_share`), which is what keeps 1 and N workers on the same data order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class BatchPlan:
    """Global batches of one epoch: batch i is ``order[offsets[i]:offsets[i + 1]]``."""

    order: np.ndarray
    offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def batch(self, i: int) -> np.ndarray:
        return self.order[self.offsets[i]:self.offsets[i + 1]]

    @classmethod
    def from_batches(cls, batches: list[np.ndarray]) -> "BatchPlan":
        offsets = np.zeros(len(batches) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(b) for b in batches])
        order = np.concatenate(batches).astype(np.int64) if batches else np.zeros(0, dtype=np.int64)
        return cls(order, offsets)


def _chunk(rows: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Split ``rows`` into ceil(n / batch_size) nearly equal consecutive chunks (none larger than
    batch_size)."""
    parts = max(1, -(-len(rows) // batch_size))
    return [part for part in np.array_split(rows, parts) if len(part)]


def random_plan(rows: np.ndarray, batch_size: int, rng: np.random.Generator) -> BatchPlan:
    """Shuffled rows cut into batches of ``batch_size`` (the last one may be smaller)."""
    shuffled = rng.permutation(rows)
    return BatchPlan.from_batches([shuffled[i:i + batch_size] for i in range(0, len(shuffled), batch_size)])


def clustered_plan(clusters: list[np.ndarray], batch_size: int, rng: np.random.Generator) -> BatchPlan:
    """Batches of similar queries, in random order.

    Clusters of at least a batch (1-2 batch sizes, the balanced tree's leaves) are cut into one or two batches
    each, so a batch never mixes clusters. Smaller clusters (a cluster-size curriculum) are shuffled,
    concatenated and cut into full batches: each batch then holds several groups of very similar queries.
    """
    if clusters and np.mean([len(c) for c in clusters]) < batch_size:
        order = np.concatenate([rng.permutation(clusters[i]) for i in rng.permutation(len(clusters))])
        return BatchPlan.from_batches([order[i:i + batch_size] for i in range(0, len(order), batch_size)])
    batches = [rng.permutation(chunk) for cluster in clusters for chunk in _chunk(cluster, batch_size)]
    return BatchPlan.from_batches([batches[i] for i in rng.permutation(len(batches))])
