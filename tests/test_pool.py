"""The PSL label pool, query clustering and batch plans."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from xmc.data.dataset import PreparedDataset
from xmc.distributed import equal_share, my_share, share_sizes
from xmc.mining.batches import BatchPlan, clustered_plan, random_plan
from xmc.mining.clustering import balanced_clusters
from xmc.mining.shortlist import remove_positives
from xmc.training.pool import PoolConfig, build_label_pool, sample_per_row


def csr(rows, num_labels):
    r = [i for i, row in enumerate(rows) for _ in row]
    c = [j for row in rows for j in row]
    return sp.csr_matrix((np.ones(len(r), dtype=np.float32), (r, c)), shape=(len(rows), num_labels))


POSITIVES = csr([[0, 1, 2], [2, 3], [4], [5, 6, 7, 8]], 12)


def test_sampled_positives_hard_negatives_and_fill():
    rng = np.random.default_rng(0)
    shortlists = np.array([[9, 1, 10, -1], [11, 11, 9, 3], [10, 9, 4, 11], [11, 9, 10, 7]])
    config = PoolConfig(positives=1, hard_negatives=2, fill_with_batch_positives=False, max_size=100)
    pool = build_label_pool(np.array([0, 1, 2, 3]), POSITIVES, config, rng, shortlists)
    ids = pool.label_ids.tolist()
    assert len(ids) == len(set(ids))
    sampled = [label for label in ids if label <= 8]
    negatives = [label for label in ids if label > 8]
    assert 3 <= len(sampled) <= 4  # one per query (queries 0 and 1 may both draw label 2)
    # shortlist entries that are the query's own positives (1 for query 0, 3 for 1, 4 for 2, 7 for 3)
    # never enter as negatives; only sampled positives can bring them in
    assert 4 in sampled  # query 2's only positive
    assert set(negatives) <= {9, 10, 11}
    # targets come from all positives: a label of query 0 that query 1 sampled is query 0's positive too
    for row, query in enumerate([0, 1, 2, 3]):
        truth = set(POSITIVES[query].indices)
        assert {ids[j] for j in np.flatnonzero(pool.targets[row])} == truth & set(ids)
    assert pool.row_mask.all()


def test_hard_negatives_are_never_positives_of_their_query():
    rng = np.random.default_rng(1)
    # every shortlist is full of the query's own positives except one real negative
    shortlists = np.array([[0, 1, 2, 11], [2, 3, 3, 10], [4, 4, 4, 9], [5, 6, 7, 8]])
    config = PoolConfig(positives=1, hard_negatives=4, fill_with_batch_positives=False)
    pool = build_label_pool(np.array([0, 1, 2, 3]), POSITIVES, config, rng, shortlists)
    assert {9, 10, 11} <= set(pool.label_ids.tolist())


def test_all_positives_fill_and_cap():
    rng = np.random.default_rng(2)
    every = build_label_pool(np.array([0, 3]), POSITIVES, PoolConfig(positives="all", hard_negatives=0), rng)
    assert sorted(every.label_ids.tolist()) == [0, 1, 2, 5, 6, 7, 8]
    filled = build_label_pool(np.array([0, 3]), POSITIVES, PoolConfig(positives=1, hard_negatives=0), rng)
    assert sorted(filled.label_ids.tolist()) == [0, 1, 2, 5, 6, 7, 8]  # the rest come back as fill
    capped = build_label_pool(np.array([0, 2, 3]), POSITIVES,
                              PoolConfig(positives=1, hard_negatives=0, max_size=2), rng)
    assert len(capped.label_ids) == 2
    assert capped.row_mask.sum() == 2  # the query whose positive fell out of the cap is masked


def test_inverse_propensity_sampling_favours_tail_labels():
    positives = csr([[0, 1]] * 4000, 2)
    weights = np.array([1.0, 9.0])  # label 1 is the tail label
    owner = np.repeat(np.arange(4000), 2)
    labels = positives.indices
    rng = np.random.default_rng(3)
    keep = sample_per_row(owner, labels, 1, rng, weights[labels])
    assert keep.sum() == 4000
    share_tail = (labels[keep] == 1).mean()
    assert share_tail == pytest.approx(0.9, abs=0.02)
    uniform = sample_per_row(owner, labels, 1, rng)
    assert (labels[uniform] == 1).mean() == pytest.approx(0.5, abs=0.03)


def test_pool_on_real_data_has_every_query_covered(cooking_prepared):
    positives = PreparedDataset(cooking_prepared).label_matrix("train")
    rng = np.random.default_rng(4)
    batch = rng.choice(positives.shape[0], 256, replace=False)
    pool = build_label_pool(batch, positives, PoolConfig(positives=3, hard_negatives=0), rng)
    assert pool.row_mask.all()
    assert pool.targets.shape == (256, len(pool.label_ids))
    # every positive of every batch query is in the pool (fill), and is marked in the targets
    assert pool.targets.sum() == positives[batch].nnz


def test_remove_positives_keeps_order():
    candidates = np.array([[0, 9, 1, 10, 11], [3, 2, 9, -1, 10]])
    kept = remove_positives(candidates, POSITIVES, np.array([0, 1]), 3)
    assert kept.tolist() == [[9, 10, 11], [9, 10, -1]]


def test_balanced_clusters_group_similar_points():
    rng = np.random.default_rng(5)
    centers = rng.normal(size=(8, 16))
    points = np.concatenate([c + 0.05 * rng.normal(size=(64, 16)) for c in centers])
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    truth = np.repeat(np.arange(8), 64)
    leaves = balanced_clusters(points.astype(np.float32), leaf_size=64, rng=rng)
    assert len(leaves) == 8 and sorted(np.concatenate(leaves).tolist()) == list(range(512))
    assert all(len(leaf) == 64 for leaf in leaves)
    purity = np.mean([np.bincount(truth[leaf]).max() / len(leaf) for leaf in leaves])
    assert purity > 0.9


def test_plans_cover_every_row_once():
    rng = np.random.default_rng(6)
    rows = np.arange(1000)
    plan = random_plan(rows, 64, rng)
    assert len(plan) == 16 and sorted(plan.order.tolist()) == rows.tolist()
    clusters = [rows[i:i + 100] for i in range(0, 1000, 100)]
    clustered = clustered_plan(clusters, 64, rng)
    assert sorted(clustered.order.tolist()) == rows.tolist()
    assert all(len(clustered.batch(i)) <= 64 for i in range(len(clustered)))
    # each batch comes from one cluster
    assert all(len({int(r) // 100 for r in clustered.batch(i)}) == 1 for i in range(len(clustered)))
    again = BatchPlan(clustered.order.copy(), clustered.offsets.copy())
    assert again.batch(3).tolist() == clustered.batch(3).tolist()


def test_worker_shares_cover_everything_in_order():
    # every worker the same number of positions (wrapped around), and the blocks restore the order
    blocks = [equal_share(7, rank, 2) for rank in range(2)]
    assert [len(b) for b in blocks] == [4, 4]
    assert np.concatenate(blocks)[:7].tolist() == list(range(7))
    assert equal_share(7, 0, 1).tolist() == list(range(7))
    assert [len(equal_share(3, rank, 4)) for rank in range(4)] == [1, 1, 1, 1]  # fewer items than workers
    # contiguous shares differ by at most one and are what share_sizes says
    rows = np.arange(10, 21)
    parts = [my_share(rows, rank, 3) for rank in range(3)]
    assert [len(p) for p in parts] == share_sizes(len(rows), 3) == [4, 4, 3]
    assert np.concatenate(parts).tolist() == rows.tolist()
