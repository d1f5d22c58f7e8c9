"""Maximum-inner-product search over label vectors with faiss.

Exact search (``IndexFlatIP``) is the default: it is what the papers evaluate with and, below
``exact_below`` vectors, fast enough on CPU (measured: see benchmarks/results/). Above that ``auto``
switches to IVF (k-means coarse quantiser, ``nprobe`` lists searched) or, if asked, HNSW. A caller
working on a GPU (a training worker) searches there: the flat and IVF indexes move to the device with a
faiss build that has GPU support (the ``gpu`` extra); with faiss-cpu a flat index becomes
:class:`TorchFlatIndex`, the same exact search as matrix products on the GPU, instead of the CPU cores
beside it.

With several workers each holds the vectors of its own labels only (a shard): :func:`sharded_topk` searches
every query in every worker's index and merges the per-worker top-k, so what travels between workers is k
candidates per query, never label vectors.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from xmc.distributed import gather_rows, rank_and_world
from xmc.mining.config import AnnConfig


def resolved_kind(config: AnnConfig, num_vectors: int) -> str:
    if config.kind != "auto":
        return config.kind
    return "flat" if num_vectors < config.exact_below else config.large_kind


class TorchFlatIndex:
    """Exact inner-product search as chunked matrix products on a torch device.

    The GPU form of ``IndexFlatIP`` where the installed faiss has no GPU support; it answers ``ntotal`` and
    ``search(queries, k) -> (scores, ids)`` like the faiss indexes, so :func:`search` takes either.
    """

    def __init__(self, vectors: np.ndarray, device, max_scores: int = 1 << 27):
        # not at module level: preparing data imports this module and must not load torch
        import torch

        self.device = torch.device(device)
        self.vectors = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32)).to(self.device)
        self.ntotal = len(vectors)
        self.max_scores = max_scores  # floats in one chunk's score matrix: bounds memory for any label count

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        import torch

        scores = np.empty((len(queries), k), dtype=np.float32)
        ids = np.empty((len(queries), k), dtype=np.int64)
        rows = max(1, self.max_scores // max(self.ntotal, 1))
        with torch.no_grad():
            for start in range(0, len(queries), rows):
                chunk = torch.from_numpy(np.ascontiguousarray(queries[start:start + rows], dtype=np.float32))
                top = torch.topk(chunk.to(self.device) @ self.vectors.T, k, dim=1)
                scores[start:start + rows] = top.values.cpu().numpy()
                ids[start:start + rows] = top.indices.cpu().numpy()
        return scores, ids


def build_index(vectors: np.ndarray, config: AnnConfig | None = None, seed: int = 0, device=None):
    """A faiss inner-product index holding ``vectors`` (row i gets id i); on ``device`` when it is a GPU and
    ``config.use_gpu`` (see the module docstring)."""
    import faiss
    import torch

    config = config or AnnConfig()
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    kind = resolved_kind(config, n)
    on_gpu = config.use_gpu and device is not None and torch.device(device).type == "cuda"
    faiss_gpu = hasattr(faiss, "StandardGpuResources")
    if on_gpu and kind == "flat" and not faiss_gpu:
        return TorchFlatIndex(vectors, device)
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = max(40, config.hnsw_m * 2)
        index.hnsw.efSearch = config.hnsw_ef_search
    else:
        lists = config.ivf_lists or int(4 * math.sqrt(n))
        lists = max(1, min(lists, n // 39))
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, lists, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        sample = vectors
        if n > lists * config.ivf_train_per_list:  # faiss trains on at most 256 points per list anyway
            sample = vectors[np.random.default_rng(seed).choice(n, lists * config.ivf_train_per_list,
                                                                replace=False)]
        index.train(sample)
        index.nprobe = min(config.ivf_nprobe, lists)
    if on_gpu and kind in ("flat", "ivf") and faiss_gpu:
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), torch.device(device).index or 0, index)
    index.add(vectors)
    return index


def search(index, queries: np.ndarray, k: int, batch_rows: int = 16384) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` ``(scores float32, ids int64)`` per query; ids are −1 where fewer than k exist."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    k = min(k, index.ntotal) if index.ntotal else k
    scores = np.empty((len(queries), k), dtype=np.float32)
    ids = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), batch_rows):
        stop = start + batch_rows
        scores[start:stop], ids[start:stop] = index.search(queries[start:stop], k)
    return scores, ids


def merge_topk(parts: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-shard ``(scores [n, k_i], global ids [n, k_i])`` into the overall top-``k``.

    Empty slots (id −1, which faiss fills when a shard has fewer than k_i hits) rank last. Ties keep shard
    order, then rank within the shard (a stable sort), so the merge is deterministic. Returns
    ``(scores float32 [n, k], ids int64 [n, k])`` padded with (−inf, −1).
    """
    scores = np.concatenate([np.asarray(s, dtype=np.float32) for s, _ in parts], axis=1)
    ids = np.concatenate([np.asarray(i, dtype=np.int64) for _, i in parts], axis=1)
    scores = np.where(ids < 0, -np.inf, scores).astype(np.float32)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    top_scores = np.take_along_axis(scores, order, axis=1)
    top_ids = np.take_along_axis(ids, order, axis=1)
    if top_ids.shape[1] < k:  # fewer candidates than k in total
        pad = k - top_ids.shape[1]
        top_scores = np.pad(top_scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        top_ids = np.pad(top_ids, ((0, 0), (0, pad)), constant_values=-1)
    return top_scores, top_ids


def sharded_topk(queries: np.ndarray, label_vectors: np.ndarray, label_ids: np.ndarray, num_labels: int,
                 k: int, config: AnnConfig | None = None, seed: int = 0, device=None,
                 batch_rows: int = 16384) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` ``(scores float32, global label ids int64)`` of ``queries`` over the labels of all workers.

    A collective: every worker passes the same ``queries`` and its own labels (``label_vectors`` of the
    global ids ``label_ids``; ``num_labels`` in all). Each worker indexes only its labels (the index kind
    chosen for ``num_labels``, so a shard is searched the way the whole would be), searches the queries a
    chunk at a time, and the chunk's per-worker candidates are all-gathered and merged. A worker holds its
    shard, the queries and ``k`` candidates per query and worker of one chunk. With one worker this is
    :func:`build_index` and :func:`search` on all labels. Returns ``min(k, num_labels)`` columns, −1 padded
    where the index kind finds fewer.
    """
    config = config or AnnConfig()
    config = dataclasses.replace(config, kind=resolved_kind(config, num_labels))
    label_ids = np.asarray(label_ids, dtype=np.int64)
    index = build_index(label_vectors, config, seed=seed, device=device) if len(label_ids) else None
    k = min(k, num_labels)
    _, world = rank_and_world()
    out_scores = np.empty((len(queries), k), dtype=np.float32)
    out_ids = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), batch_rows):
        chunk = queries[start:start + batch_rows]
        scores = np.full((len(chunk), k), -np.inf, dtype=np.float32)
        ids = np.full((len(chunk), k), -1, dtype=np.int64)
        if index is not None:
            found_scores, found = search(index, chunk, k)
            hits = found >= 0
            scores[:, :found.shape[1]] = np.where(hits, found_scores, -np.inf)
            ids[:, :found.shape[1]] = np.where(hits, label_ids[np.maximum(found, 0)], -1)
        if world > 1:
            scores = gather_rows(scores, device)  # [world · chunk, k]: worker r's candidates in block r
            ids = gather_rows(ids, device)
            parts = [(scores[r * len(chunk):(r + 1) * len(chunk)], ids[r * len(chunk):(r + 1) * len(chunk)])
                     for r in range(world)]
            scores, ids = merge_topk(parts, k)
        out_scores[start:start + len(chunk)], out_ids[start:start + len(chunk)] = scores, ids
    return out_scores, out_ids
