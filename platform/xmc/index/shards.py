"""Label index shards: contiguous ranges of label ids, one faiss index each, and the top-k merge.

Offline evaluation of a bundle and the Serve app both search every shard and merge with
:func:`merge_topk`, so a served answer and an offline answer for the same bundle are the same computation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xmc.mining.ann import merge_topk, search

__all__ = ["ShardIndex", "merge_topk", "shard_ranges"]


def shard_ranges(num_labels: int, shards: int) -> list[tuple[int, int]]:
    """``[start, stop)`` label-id ranges of ``shards`` near-equal contiguous shards (none empty)."""
    if not 1 <= shards <= max(num_labels, 1):
        raise ValueError(f"shards must be between 1 and the number of labels ({num_labels}), got {shards}")
    bounds = np.linspace(0, num_labels, shards + 1).round().astype(np.int64)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


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
