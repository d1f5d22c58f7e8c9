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

import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from xmc.distributed import gather_rows, rank_and_world
from xmc.memory import release_freed_memory
from xmc.mining.config import AnnConfig

#: Bytes of label vectors produced at once while an index is built from a :class:`VectorSource` (bounds
#: the memory beside the index itself). ``$XMC_CHUNK_BYTES`` changes it: a test measuring label memory at a
#: few thousand labels needs chunks much smaller than a worker's labels.
CHUNK_BYTES = int(os.environ.get("XMC_CHUNK_BYTES", 64 << 20))


@dataclass
class VectorSource:
    """``count`` vectors made on demand: ``fetch(positions)`` returns the float32 rows at those positions,
    in that order. An index built from a source holds the vectors once: they are made a chunk at a time and
    added, so no whole copy of them exists beside the index (encoder outputs, normalised table rows and
    fused vectors are all made this way)."""

    count: int
    fetch: Callable[[np.ndarray], np.ndarray]
    dim: int = 0  # the vectors' width when known (else learnt from the first chunk)

    @classmethod
    def of(cls, vectors: np.ndarray) -> VectorSource:
        vectors = np.asarray(vectors, dtype=np.float32)
        return cls(len(vectors), lambda positions: vectors[positions],
                   vectors.shape[1] if vectors.ndim == 2 else 0)

    def chunk_rows(self, dim: int | None = None) -> int:
        """Vectors per chunk of about :data:`CHUNK_BYTES`."""
        return max(1, CHUNK_BYTES // max((dim or self.dim or 1024) * 4, 1))

    def chunks(self, first: np.ndarray | None = None) -> Iterator[np.ndarray]:
        """Every vector in order, in chunks of about :data:`CHUNK_BYTES` (``first``: the first chunk, when
        the caller has already made it to learn the width)."""
        rows = self.chunk_rows()
        start = 0
        if first is not None:
            start, rows = len(first), self.chunk_rows(first.shape[1])
            yield first
            first = None  # consumed: not held beside the chunks that follow
        while start < self.count:
            chunk = np.ascontiguousarray(self.fetch(np.arange(start, min(start + rows, self.count))),
                                         dtype=np.float32)
            start, rows = start + len(chunk), self.chunk_rows(chunk.shape[1])
            yield chunk
            # the chunk is consumed: let it go before the next is made, and hand back what making it freed,
            # or the C library's heap grows with the number of chunks and the peak with the number of labels
            # (xmc.memory)
            del chunk
            release_freed_memory()


def as_source(vectors: np.ndarray | VectorSource) -> VectorSource:
    return vectors if isinstance(vectors, VectorSource) else VectorSource.of(vectors)


def stacked(*sources: VectorSource) -> VectorSource:
    """The vectors of ``sources`` one after the other (positions past the first source's are the next's)."""
    starts = np.cumsum([0] + [source.count for source in sources])

    def fetch(positions: np.ndarray) -> np.ndarray:
        positions = np.asarray(positions, dtype=np.int64)
        part = np.searchsorted(starts, positions, side="right") - 1
        out = None
        for number, source in enumerate(sources):
            mine = np.flatnonzero(part == number)
            if not len(mine):
                continue
            vectors = source.fetch(positions[mine] - starts[number])
            if out is None:
                out = np.empty((len(positions), vectors.shape[1]), dtype=np.float32)
            out[mine] = vectors
        return out if out is not None else np.zeros((0, sources[0].dim), dtype=np.float32)

    return VectorSource(int(starts[-1]), fetch, sources[0].dim)


def resolved_kind(config: AnnConfig, num_vectors: int) -> str:
    if config.kind != "auto":
        return config.kind
    return "flat" if num_vectors < config.exact_below else config.large_kind


def index_key(config: AnnConfig, num_labels: int, seed: int = 0) -> tuple:
    """What decides the index :func:`build_shard_index` makes of the same vectors: two requests with the same
    key get the same index, so one may serve both."""
    kind = resolved_kind(config, num_labels)
    if kind == "flat":
        return kind, config.use_gpu
    if kind == "hnsw":
        return kind, config.hnsw_m, config.hnsw_ef_search
    return kind, config.use_gpu, config.ivf_lists, config.ivf_nprobe, config.ivf_train_per_list, seed


class TorchFlatIndex:
    """Exact inner-product search as chunked matrix products on a torch device.

    The GPU form of ``IndexFlatIP`` where the installed faiss has no GPU support; it answers ``ntotal`` and
    ``search(queries, k) -> (scores, ids)`` like the faiss indexes, so :func:`search` takes either.
    """

    def __init__(self, vectors: np.ndarray | VectorSource, device, max_scores: int = 1 << 27):
        # not at module level: preparing data imports this module and must not load torch
        import torch

        self.device = torch.device(device)
        source = as_source(vectors)
        self.vectors = None
        start = 0
        for chunk in source.chunks():
            if self.vectors is None:
                self.vectors = torch.empty((source.count, chunk.shape[1]), device=self.device)
            self.vectors[start:start + len(chunk)] = torch.from_numpy(chunk).to(self.device)
            start += len(chunk)
            del chunk  # else it is held while the next one is made (as in build_index)
        if self.vectors is None:
            self.vectors = torch.empty((0, 0), device=self.device)
        self.ntotal = source.count
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


def _reserve(store, size: int, keep: int = 0) -> None:
    """Give a faiss vector (a flat code store, an HNSW graph's arrays) its final capacity before vectors are
    added chunk by chunk: faiss grows it like a ``std::vector`` otherwise, and each regrowth holds the old
    and the new buffer at once. ``keep``: the size it has now and goes back to."""
    store.resize(size)
    store.resize(keep)  # the size goes back, the capacity stays


def _reserve_hnsw(index, n: int, dim: int, m: int) -> None:
    """Capacity for ``n`` vectors in an HNSW index of degree ``m``: their codes, and the graph's links. A node
    on level l holds 2m links on level 0 and m on each level above; faiss draws level l with probability
    m^-l(1-1/m), so a node holds 2m + m/(m-1) links on average. The 1% margin is hundreds of standard
    deviations of the total at any n, so the graph never regrows."""
    import faiss

    _reserve(faiss.downcast_index(index.storage).codes, n * dim * 4)
    hnsw = index.hnsw
    _reserve(hnsw.neighbors, int(n * (2 * m + m / (m - 1)) * 1.01) + 128 * m, hnsw.neighbors.size())
    _reserve(hnsw.levels, n, hnsw.levels.size())
    _reserve(hnsw.offsets, n + 1, hnsw.offsets.size())


def build_index(vectors: np.ndarray | VectorSource, config: AnnConfig | None = None, seed: int = 0,
                device=None, kind: str | None = None, digest=None):
    """A faiss inner-product index holding ``vectors`` (an array, or a :class:`VectorSource` whose vectors
    are made and added a chunk at a time; row i gets id i); on ``device`` when it is a GPU and
    ``config.use_gpu`` (see the module docstring). ``kind``: the index kind when the caller has chosen it
    (for all labels, of which ``vectors`` are a shard), else the one ``config`` gives for this count.
    ``digest`` (a hashlib object) is fed the vectors' bytes in order as they are added."""
    import faiss
    import torch

    config = config or AnnConfig()
    source = as_source(vectors)
    n = source.count
    kind = kind or resolved_kind(config, n)
    on_gpu = config.use_gpu and device is not None and torch.device(device).type == "cuda"
    faiss_gpu = hasattr(faiss, "StandardGpuResources")
    if on_gpu and kind == "flat" and not faiss_gpu:
        return TorchFlatIndex(source, device)
    sample = None
    if kind == "ivf":
        lists = config.ivf_lists or int(4 * math.sqrt(n))
        lists = max(1, min(lists, n // 39))
        # faiss trains on at most 256 points a list anyway and needs 39; and at most half the vectors, or
        # the sample would be a second whole copy of them beside the index being filled (a large index
        # makes its vectors again, a chunk at a time, to add them)
        size = min(n, lists * config.ivf_train_per_list, max(lists * 39, n // 2))
        positions = np.arange(n)
        if size < n:
            positions = np.random.default_rng(seed).choice(n, size, replace=False)
        sample = np.ascontiguousarray(source.fetch(positions), dtype=np.float32)
        first = None
    elif not source.dim:  # the first chunk tells the width
        first = np.ascontiguousarray(source.fetch(np.arange(min(n, source.chunk_rows()))), dtype=np.float32)
    else:
        first = None  # the width is known: the index is made before any chunk
    dim = sample.shape[1] if sample is not None else first.shape[1] if first is not None else source.dim
    to_gpu = on_gpu and kind in ("flat", "ivf") and faiss_gpu  # then the vectors are added on the GPU
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
        if not to_gpu:
            _reserve(index.codes, n * dim * 4)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = max(40, config.hnsw_m * 2)
        index.hnsw.efSearch = config.hnsw_ef_search
        _reserve_hnsw(index, n, dim, config.hnsw_m)
    else:
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, lists, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        index.train(sample)
        index.nprobe = min(config.ivf_nprobe, lists)
        if len(sample) == n:  # trained on every vector, in id order: add those instead of making them again
            source = VectorSource.of(sample)
        del sample
    if to_gpu:
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), torch.device(device).index or 0, index)
    if n:
        chunks = source.chunks(first)
        del first  # the generator holds it until it is added, no longer
        for chunk in chunks:
            index.add(chunk)
            if digest is not None:
                digest.update(memoryview(chunk))  # the chunk's bytes in place (it is C-contiguous)
            del chunk  # else it is held while the next one is made
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


def build_shard_index(label_vectors: np.ndarray | VectorSource, num_labels: int,
                      config: AnnConfig | None = None, seed: int = 0, device=None):
    """This worker's index of its labels (``label_vectors``: theirs, an array or a source), of the kind
    chosen for all ``num_labels`` so that a shard is searched the way the whole would be; None when the
    worker holds no label."""
    config = config or AnnConfig()
    source = as_source(label_vectors)
    if not source.count:
        return None
    return build_index(source, config, seed=seed, device=device, kind=resolved_kind(config, num_labels))


def sharded_search(queries: np.ndarray, index, label_ids: np.ndarray, num_labels: int, k: int, device=None,
                   batch_rows: int = 16384) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` ``(scores float32, global label ids int64)`` of ``queries`` over the labels of all workers.

    A collective: every worker passes the same ``queries`` and the index of its own labels
    (:func:`build_shard_index`; row i of it is global label ``label_ids[i]``; ``num_labels`` in all). Each
    worker searches the queries a chunk at a time, and the chunk's per-worker candidates are all-gathered and
    merged: a worker holds its shard, the queries and ``k`` candidates per query and worker of one chunk.
    With one worker this is :func:`search` on all labels. Returns ``min(k, num_labels)`` columns, −1 padded
    where the index kind finds fewer.
    """
    label_ids = np.asarray(label_ids, dtype=np.int64)
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


def sharded_topk(queries: np.ndarray, label_vectors: np.ndarray | VectorSource, label_ids: np.ndarray,
                 num_labels: int, k: int, config: AnnConfig | None = None, seed: int = 0, device=None,
                 batch_rows: int = 16384) -> tuple[np.ndarray, np.ndarray]:
    """:func:`build_shard_index` of this worker's ``label_vectors``, then :func:`sharded_search` (a
    collective); the index is freed on return."""
    index = build_shard_index(label_vectors, num_labels, config, seed, device)
    return sharded_search(queries, index, label_ids, num_labels, k, device, batch_rows)
