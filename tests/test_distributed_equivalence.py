"""The label-sharded table and the gathered label embeddings give 2 workers exactly what 1 worker computes;
rows one worker asks for come from their owners.

Two gloo processes on 127.0.0.1 (no Ray needed) each hold half of the table; the rows they look up, the
loss and the gradients (summed over workers, then averaged like DDP) must equal the single-process ones.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from xmc.distributed import (
    all_gather_with_grad,
    gather_rows,
    gather_rows_to_first,
    reduce_scatter_rows,
    scatter_rows,
)
from xmc.losses.multilabel import supcon
from xmc.models.label_table import ShardedLabelTable
from xmc.models.prototypes import LabelPrototypes

from conftest import run_on_workers

NUM_LABELS, DIM, BATCH = 23, 8, 6
POOL = np.array([3, 17, 4, 22, 0, 9, 11, 5], dtype=np.int64)


def _inputs():
    gen = torch.Generator().manual_seed(0)
    table = torch.randn(NUM_LABELS, DIM, generator=gen)
    queries = torch.randn(BATCH, DIM, generator=gen)
    labels_de = torch.randn(len(POOL), DIM, generator=gen)
    targets = torch.zeros(BATCH, len(POOL), dtype=torch.bool)
    targets[torch.arange(BATCH), torch.arange(BATCH) % len(POOL)] = True
    return table, queries, labels_de, targets


def _loss(rows, queries, labels_de, targets):
    clf = supcon(10 * F.normalize(queries, dim=-1) @ F.normalize(rows, dim=-1).T, targets)
    de = supcon(10 * F.normalize(queries, dim=-1) @ F.normalize(labels_de, dim=-1).T, targets)
    return clf + de


def _single():
    table, queries, labels_de, targets = _inputs()
    sharded = ShardedLabelTable(NUM_LABELS, DIM, 0, 1, initial=table.numpy())
    labels_de = labels_de.clone().requires_grad_()
    loss = _loss(sharded(torch.from_numpy(POOL)), queries, labels_de, targets)
    loss.backward()
    return loss.item(), sharded.rows.weight.grad.to_dense(), labels_de.grad


def _worker(rank, world):
    table, queries, labels_de, targets = _inputs()
    sharded = ShardedLabelTable(NUM_LABELS, DIM, rank, world, initial=table.numpy())
    mine = np.arange(rank, BATCH, world)  # each worker its own queries
    share = len(POOL) // world  # and an equal share of the pool's label embeddings
    local_labels = labels_de[rank * share:(rank + 1) * share].clone().requires_grad_()
    gathered = all_gather_with_grad(local_labels, [share] * world)
    rows = sharded(torch.from_numpy(POOL))
    # the global loss is the mean over workers of their local means (equal local sizes)
    loss = _loss(rows, queries[mine], gathered, targets[mine])
    loss.backward()
    sharded.average_gradients()
    for p in (local_labels,):  # what DDP does for dense parameters
        p.grad /= world
    grad = torch.zeros(NUM_LABELS, DIM)
    grad[torch.from_numpy(sharded.owned)] = sharded.rows.weight.grad.to_dense()
    dist.all_reduce(grad)  # assemble the shards' gradients (test only)
    total = torch.tensor([loss.item()])
    dist.all_reduce(total)
    label_grad = gather_rows(local_labels.grad.numpy())
    full = sharded.full_normalized()
    # a worker with nothing to contribute (and so no width) still gets everyone's rows
    mine = np.full((2, 3), rank + 1.0, np.float32) if rank == 0 else np.zeros((0, 0), np.float32)
    uneven = gather_rows(mine)
    # each worker asks for different rows, in rounds of 3 ids; worker 1 asks for none
    asked = np.array([22, 1, 4, 4, 13, 0, 7, 19], dtype=np.int64) if rank == 0 else np.zeros(0, np.int64)
    fetched = sharded.rows_of(asked, chunk=3)
    # a worker's own labels' prototype inputs, fetched from the free vectors' owners, are what the
    # every-worker-the-same-ids lookup gives for those labels
    prototypes = LabelPrototypes(NUM_LABELS, DIM, 8, rank, world)
    prototypes.free_of = np.arange(NUM_LABELS) * 5 % 8
    with torch.no_grad():
        prototypes.free.rows.weight.copy_(table[:8][torch.from_numpy(prototypes.free.owned)])
    prototypes.centroids.rows = -table[torch.from_numpy(prototypes.centroids.owned)]
    own_free, own_centroids = prototypes.own_inputs()
    all_free, all_centroids = prototypes.inputs(np.arange(NUM_LABELS))
    owned = torch.from_numpy(prototypes.centroids.owned)
    assert torch.equal(own_free, all_free[owned].detach())
    assert torch.equal(own_centroids, all_centroids[owned])
    assert torch.equal(own_free, table[:8][torch.from_numpy(prototypes.free_of)][owned])
    # each worker receives the sum of its own block of rows only
    summed = reduce_scatter_rows(torch.arange(10.0).reshape(5, 2) * (rank + 1), [3, 2])
    assert torch.equal(summed, 3 * torch.arange(10.0).reshape(5, 2)[[0, 1, 2] if rank == 0 else [3, 4]])
    # rank 0 alone receives every worker's rows (of uneven counts), and sends each worker its own block
    gathered_first = gather_rows_to_first(np.full((3 - rank, 2), rank, np.float32))
    if rank == 0:
        assert [block.tolist() for block in gathered_first] == [[[0, 0]] * 3, [[1, 1]] * 2]
    else:
        assert gathered_first is None
    blocks = [np.arange(6, dtype=np.int64).reshape(3, 2), np.array([[7, 8]])] if rank == 0 else None
    assert scatter_rows(blocks).tolist() == ([[0, 1], [2, 3], [4, 5]] if rank == 0 else [[7, 8]])
    if rank == 0:
        return (total.item() / world, grad.numpy(), label_grad, rows.detach().numpy(), full.numpy(),
                uneven, asked, fetched.numpy())
    assert fetched.shape == (0, DIM)
    return None


def test_two_workers_match_one():
    loss2, *arrays, uneven, asked, fetched = run_on_workers(_worker, 2, timeout=120)[0]
    grad2, label_grad2, rows2, full2 = map(torch.from_numpy, arrays)
    assert uneven.shape == (2, 3) and (uneven == 1.0).all()
    loss1, grad1, label_grad1 = _single()
    table = _inputs()[0]
    assert torch.equal(rows2, table[torch.from_numpy(POOL)])  # every worker sees all pool rows
    assert torch.allclose(full2, F.normalize(table, dim=-1), atol=1e-6)
    assert np.array_equal(fetched, table.numpy()[asked])  # rows asked for by one worker, from both owners
    # only pool rows have gradients, and they match the single-process ones
    untouched = np.setdiff1d(np.arange(NUM_LABELS), POOL)
    assert torch.count_nonzero(grad2[torch.from_numpy(untouched)]) == 0
    assert loss2 == pytest.approx(loss1, rel=1e-5)
    assert torch.allclose(grad2, grad1, atol=1e-6)
    assert torch.allclose(label_grad2, label_grad1, atol=1e-6)
