"""Balanced hierarchical 2-means over L2-normalised embeddings, used to form batches of similar queries.

Batches of similar queries make the in-batch labels hard negatives of each other (NGAME, UniDEC). Each split
assigns the half of the points closest (relative to the other centroid) to each of two centroids, so the
tree is perfectly balanced and every leaf has the same size up to one point; splitting stops at the
depth where a leaf would become smaller than ``leaf_size``.
"""

from __future__ import annotations

import math

import numpy as np


def split_in_two(vectors: np.ndarray, rows: np.ndarray, rng: np.random.Generator, max_iter: int = 20,
                 tol: float = 1e-4) -> tuple[np.ndarray, np.ndarray]:
    """Split ``rows`` into two halves (sizes differ by at most one) by balanced spherical 2-means."""
    points = vectors[rows]
    centroids = points[rng.choice(len(rows), 2, replace=False)].astype(np.float32)
    half = len(rows) // 2
    previous = -np.inf
    order = np.arange(len(rows))
    for _ in range(max_iter):
        similarity = points @ centroids.T
        order = np.argsort(similarity[:, 1] - similarity[:, 0], kind="stable")  # closest to centroid 0 first
        left, right = order[:half], order[half:]
        objective = (similarity[left, 0].sum() + similarity[right, 1].sum()) / len(rows)
        if objective - previous < tol:
            break
        previous = objective
        for side, members in enumerate((left, right)):
            mean = points[members].mean(axis=0)
            centroids[side] = mean / max(float(np.linalg.norm(mean)), 1e-12)
    return rows[order[:half]], rows[order[half:]]


def balanced_clusters(vectors: np.ndarray, leaf_size: int, rng: np.random.Generator,
                      rows: np.ndarray | None = None) -> list[np.ndarray]:
    """Leaves of the balanced 2-means tree over ``vectors[rows]``; each has between ``leaf_size`` and
    ``2·leaf_size`` points (fewer only when there are fewer points than ``leaf_size``)."""
    rows = np.arange(len(vectors)) if rows is None else np.asarray(rows)
    depth = max(0, int(math.floor(math.log2(max(len(rows), 1) / leaf_size)))) if len(rows) else 0
    clusters = [rows]
    for _ in range(depth):
        clusters = [half for cluster in clusters for half in split_in_two(vectors, cluster, rng)]
    return clusters
