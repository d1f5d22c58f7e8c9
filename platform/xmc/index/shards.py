"""Label index shards: contiguous ranges of label ids, one faiss index each, and the top-k merge.

Offline evaluation of a bundle and the Serve app both search every shard and merge with
:func:`merge_topk`, so a served answer and an offline answer for the same bundle are the same computation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xmc.mining.ann import search


def shard_ranges(num_labels: int, shards: int) -> list[tuple[int, int]]:
    """``[start, stop)`` label-id ranges of ``shards`` near-equal contiguous shards (none empty)."""
    if not 1 <= shards <= max(num_labels, 1):
        raise ValueError(f"shards must be between 1 and the number of labels ({num_labels}), got {shards}")
    bounds = np.linspace(0, num_labels, shards + 1).round().astype(np.int64)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


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


@dataclass
class ShardIndex:
    """One loaded shard: its faiss index (local row i) and the global label id of each row."""

    index: object
    label_ids: np.ndarray

    @classmethod
    def load(cls, directory: Path, device: str = "cpu") -> "ShardIndex":
        """The shard in ``directory``; on ``device`` a GPU, a flat or IVF index moves to it when faiss has GPU
        support (HNSW has no GPU form and stays on the CPU)."""
        import faiss

        index = faiss.read_index(str(directory / "index.faiss"))
        if device.startswith("cuda") and hasattr(faiss, "StandardGpuResources") and \
                isinstance(index, (faiss.IndexFlat, faiss.IndexIVF)):
            gpu = int(device.partition(":")[2] or 0)
            index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), gpu, index)
        return cls(index, np.load(directory / "label_ids.npy", allow_pickle=False))

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` ``(scores, global label ids)`` within this shard; −1 where it holds fewer than k."""
        scores, local = search(self.index, vectors, k)
        return scores, np.where(local >= 0, self.label_ids[np.maximum(local, 0)], -1)
