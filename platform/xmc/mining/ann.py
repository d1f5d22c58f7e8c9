"""Maximum-inner-product search over label vectors with faiss.

Exact search (``IndexFlatIP``) is the default: it is what the papers evaluate with and, below about a
million labels, fast enough on CPU. Above ``exact_below`` vectors ``auto`` switches to IVF (k-means coarse
quantiser, ``nprobe`` lists searched) or, if asked, HNSW. On a GPU the flat and IVF indexes can be moved to
the device when a faiss build with GPU support is installed (the ``gpu`` extra).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np


@dataclass(kw_only=True)
class AnnConfig:
    """Which faiss index to build over label vectors.

    Args:
        kind: ``auto`` (flat below ``exact_below`` vectors, ``large_kind`` above), ``flat``, ``ivf`` or ``hnsw``.
        exact_below: size threshold of ``auto``.
        large_kind: what ``auto`` builds above the threshold: ``ivf`` (cheap to build: mining rebuilds it
            every refresh) or ``hnsw`` (better recall per millisecond: serving builds it once).
        ivf_lists: IVF inverted lists; 0 = 4·sqrt(n), capped so each list trains on >= 39 points.
        ivf_nprobe: lists scanned per query (recall/latency knob).
        ivf_train_per_list: k-means training points per list (faiss warns below 39; 256 is its cap).
        hnsw_m: HNSW graph degree.
        hnsw_ef_search: HNSW search beam (recall/latency knob).
        use_gpu: put flat/IVF indexes on the GPU when faiss has GPU support.
    """

    kind: Literal["auto", "flat", "ivf", "hnsw"] = "auto"
    exact_below: int = 1_000_000
    large_kind: Literal["ivf", "hnsw"] = "ivf"
    ivf_lists: int = 0
    ivf_nprobe: int = 32
    ivf_train_per_list: int = 256
    hnsw_m: int = 32
    hnsw_ef_search: int = 128
    use_gpu: bool = False


def resolved_kind(config: AnnConfig, num_vectors: int) -> str:
    if config.kind != "auto":
        return config.kind
    return "flat" if num_vectors < config.exact_below else config.large_kind


def build_index(vectors: np.ndarray, config: AnnConfig | None = None, seed: int = 0):
    """A faiss inner-product index holding ``vectors`` (row i gets id i)."""
    import faiss

    config = config or AnnConfig()
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    kind = resolved_kind(config, n)
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
    if config.use_gpu and kind in ("flat", "ivf") and hasattr(faiss, "StandardGpuResources"):
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
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
