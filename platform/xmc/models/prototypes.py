"""PRIME's label prototypes (Dahiya, Ortego, Jiménez; NAACL 2025).

A label's prototype combines three vectors, read by one transformer layer without positional encoding,
mean-pooled over the three outputs and L2-normalised:

- u_l, the label text's dual-encoder embedding (trained with the encoder),
- v_c(l), a learnable free vector shared by a small cluster c(l) of labels with similar text (a
  :class:`~xmc.models.label_table.ShardedLabelTable` with one row per cluster, sparse updates),
- m_l, the label centroid: the mean embedding of the training queries tagged with l, kept in a
  label-sharded :class:`CentroidStore` and moved during training (EMA of the batch's query embeddings, or
  recomputed exactly from all training queries at each mining refresh). Labels without training queries
  start from their text embedding.

Retrieval then scores queries against prototypes instead of raw label-text embeddings.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xmc.distributed import all_reduce_with_grad, is_distributed
from xmc.models.label_table import ShardedLabelTable, local_positions, owned_labels

if TYPE_CHECKING:
    import scipy.sparse as sp


class LabelPrototypeNetwork(nn.Module):
    """``(text [P, d], free [P, d], centroid [P, d]) -> prototype [P, d]`` (normalised)."""

    def __init__(self, dim: int, heads: int = 1, ffn: int = 1024, dropout: float = 0.1):
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(dim, heads, ffn, dropout, activation="gelu", batch_first=True)

    def forward(self, text: torch.Tensor, free: torch.Tensor, centroid: torch.Tensor) -> torch.Tensor:
        tokens = torch.stack([text, free.to(text.dtype), centroid.to(text.dtype)], dim=1)
        return F.normalize(self.layer(tokens).mean(dim=1).float(), dim=-1)


class CentroidStore:
    """Label centroids, sharded like the classifier table (worker r owns labels l % world == r); no gradients.

    ``lookup`` and ``ema_update`` are collectives: every worker calls them with the same pool.
    """

    def __init__(self, num_labels: int, dim: int, rank: int = 0, world_size: int = 1,
                 device: torch.device | str = "cpu", owned: np.ndarray | None = None):
        self.num_labels, self.dim, self.rank, self.world_size = num_labels, dim, rank, world_size
        self.owned = owned_labels(num_labels, rank, world_size, owned)
        self.rows = torch.zeros(len(self.owned), dim, device=device)

    def _mine(self, label_ids: torch.Tensor) -> torch.Tensor:
        return (label_ids % self.world_size) == self.rank

    @torch.no_grad()
    def lookup(self, label_ids: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return self.rows[local_positions(self.owned, self.num_labels, label_ids)]
        mine = self._mine(label_ids)
        out = torch.zeros(len(label_ids), self.dim, device=self.rows.device)
        out[mine] = self.rows[label_ids[mine] // self.world_size]
        return all_reduce_with_grad(out) if is_distributed() else out

    @torch.no_grad()
    def ema_update(self, label_ids: torch.Tensor, query_embeddings: torch.Tensor, targets: torch.Tensor,
                   beta: float) -> None:
        """m_l ← normalise(β m_l + (1 − β) · mean of the batch's (all workers') queries tagged with l)."""
        sums = targets.float().T @ query_embeddings.float()
        counts = targets.float().sum(dim=0)
        if is_distributed():
            import torch.distributed as dist

            dist.all_reduce(sums)
            dist.all_reduce(counts)
        mine = self._mine(label_ids) & (counts > 0)
        if not bool(mine.any()):
            return
        batch_mean = F.normalize(sums[mine] / counts[mine, None], dim=-1)
        local = label_ids[mine] // self.world_size
        self.rows[local] = F.normalize(beta * self.rows[local] + (1.0 - beta) * batch_mean, dim=-1)

    @torch.no_grad()
    def set_exact(self, positives_by_label, query_embeddings: np.ndarray, fallback: np.ndarray) -> None:
        """m_l = normalised mean of all training-query embeddings tagged with l (its ``fallback`` row if
        none).

        ``positives_by_label`` is the CSC/CSR matrix labels × training queries restricted to the owned labels;
        ``fallback`` holds the owned labels' rows, in ``owned`` order.
        """
        sums = np.asarray(positives_by_label @ query_embeddings, dtype=np.float32)
        counts = np.asarray(positives_by_label.sum(axis=1)).ravel()
        rows = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], fallback)
        rows /= np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
        self.rows = torch.from_numpy(rows.astype(np.float32)).to(self.rows.device)


class LabelPrototypes:
    """The label-side state of PRIME's prototypes, sharded across workers like the classifier table: the
    free vectors (one per cluster of labels with similar text; sparse rows), each label's cluster
    (``free_of``, set once from the label texts) and the label centroids."""

    def __init__(self, num_labels: int, dim: int, num_free: int, rank: int = 0, world_size: int = 1,
                 device: torch.device | str = "cpu", subset: np.ndarray | None = None):
        """``subset``: hold the state of these labels only (one process's subset, for inference); the free
        vectors they need are chosen once their clusters are known (:meth:`hold_free_vectors_of`)."""
        self.num_labels = num_labels
        held = None if subset is None else np.zeros(0, dtype=np.int64)
        self.free = ShardedLabelTable(num_free, dim, rank, world_size, owned=held).to(device)
        self.free_of: np.ndarray | None = None  # label -> free-vector cluster
        self.centroids = CentroidStore(num_labels, dim, rank, world_size, device, owned=subset)

    def hold_free_vectors_of(self, labels: np.ndarray) -> None:
        """Make the free-vector table of a subset model hold the clusters of ``labels`` (rows to be read)."""
        free = self.free
        self.free = ShardedLabelTable(free.num_labels, free.dim, owned=np.unique(self.free_of[labels])).to(
            free.rows.weight.device)

    @staticmethod
    def default_num_free(num_labels: int) -> int:
        """The power of two nearest L/2: clusters of about two labels share a free vector."""
        return 2 ** max(0, round(math.log2(max(num_labels / 2, 1))))

    def set_exact_centroids(self, positives: sp.csr_matrix, queries: np.ndarray,
                            fallback: np.ndarray) -> None:
        """Each owned label's centroid from all training queries tagged with it: ``positives`` is the label
        matrix of the rows ``queries`` embeds (training queries × labels); ``fallback`` the text embeddings
        of the owned labels, in ``centroids.owned`` order."""
        by_label = positives[:, self.centroids.owned].T.tocsr()
        self.centroids.set_exact(by_label, queries, fallback)

    def own_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(free vectors, centroids)`` of the labels this worker owns (``centroids.owned`` order), without
        gradients: a collective, but one in which no worker holds other workers' labels."""
        return self.free.rows_of(self.free_of[self.centroids.owned]), self.centroids.rows

    def inputs(self, label_ids: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """``(free vectors, centroids)`` of ``label_ids`` on every worker (a collective: every worker calls it
        with the same ids). The free vectors keep their graph, so the prototype loss trains them."""
        device = self.centroids.rows.device
        free = self.free(torch.from_numpy(self.free_of[label_ids]).to(device))
        return free, self.centroids.lookup(torch.from_numpy(np.asarray(label_ids)).to(device))
