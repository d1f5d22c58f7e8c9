"""The per-label classifier table, sharded by label across workers.

At 1M labels × 768 floats the table is 3 GB (and Adam doubles that twice), so it is never all-reduced
densely. Worker r owns the labels ``l`` with ``l % world_size == r`` in a sparse ``nn.Embedding``. A step
only touches the rows of its label pool: each worker looks up the pool rows it owns, one all-reduce of the
``[pool, dim]`` block gives every worker all pool rows, and the backward of that all-reduce sums the
gradients of all workers' losses into the owners' rows. So only pool rows travel, only pool rows get
gradients (sparse), and only they are updated (``torch.optim.SparseAdam``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xmc.distributed import all_reduce_with_grad, gather_rows


def owned_labels(num_labels: int, rank: int, world_size: int, owned: np.ndarray | None = None) -> np.ndarray:
    """The labels a shard holds: ``owned`` (sorted; one process's own subset), else the training split
    ``l % world_size == rank``."""
    if owned is None:
        return np.arange(rank, num_labels, world_size, dtype=np.int64)
    if world_size != 1:
        raise ValueError("a table of chosen labels belongs to one process (world_size 1)")
    owned = np.asarray(owned, dtype=np.int64)
    if len(owned) > 1 and not np.all(np.diff(owned) > 0):
        raise ValueError("owned label ids must be sorted and unique")
    return owned


def local_positions(owned: np.ndarray, num_labels: int, label_ids, device=None):
    """Positions in ``owned`` (sorted) of ``label_ids``, as a tensor (on ``device`` for tensor ids): the ids
    themselves when ``owned`` is every label. An id outside ``owned`` is an error, not a wrong row."""
    is_tensor = isinstance(label_ids, torch.Tensor)
    if len(owned) == num_labels:
        return label_ids if is_tensor else torch.from_numpy(np.asarray(label_ids, dtype=np.int64)).to(device)
    ids = label_ids.cpu().numpy() if is_tensor else np.asarray(label_ids, dtype=np.int64)
    positions = np.searchsorted(owned, ids)
    if len(ids) and (positions.max() >= len(owned) or not np.array_equal(owned[positions], ids)):
        raise KeyError("asked for rows of labels this shard does not hold")
    out = torch.from_numpy(positions.astype(np.int64))
    return out.to(label_ids.device if is_tensor else device)


class ShardedLabelTable(nn.Module):
    """Rows of the labels this worker owns; ``forward(pool)`` returns all pool rows on every worker.

    ``owned`` makes a table of any set of labels instead of the training split, for inference on a subset
    (an index shard of a bundle: :meth:`xmc.scoring.model.ScoringModel.build` with ``labels``); such a
    table is one process's alone (``world_size`` 1) and finds a label's row by its position in ``owned``.
    """

    def __init__(self, num_labels: int, dim: int, rank: int = 0, world_size: int = 1,
                 initial: np.ndarray | None = None, owned: np.ndarray | None = None):
        super().__init__()
        self.num_labels, self.dim, self.rank, self.world_size = num_labels, dim, rank, world_size
        self.owned = owned_labels(num_labels, rank, world_size, owned)
        self.rows = nn.Embedding(len(self.owned), dim, sparse=True)
        with torch.no_grad():
            if initial is not None:
                self.rows.weight.copy_(torch.from_numpy(np.asarray(initial[self.owned], dtype=np.float32)))
            else:
                nn.init.xavier_uniform_(self.rows.weight)

    def local_rows(self, label_ids: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Positions in this table of labels it holds (a table of all labels: the ids themselves)."""
        return local_positions(self.owned, self.num_labels, label_ids, self.rows.weight.device)

    def forward(self, label_ids: torch.Tensor) -> torch.Tensor:
        """``[len(label_ids), dim]`` rows (differentiable; gradients reach the owners' sparse rows)."""
        if self.world_size == 1:
            return self.rows(self.local_rows(label_ids))
        mine = (label_ids % self.world_size) == self.rank
        out = torch.zeros(len(label_ids), self.dim, device=self.rows.weight.device)
        out = out.index_put((mine.nonzero(as_tuple=True)[0],), self.rows(label_ids[mine] // self.world_size))
        return all_reduce_with_grad(out)

    def average_gradients(self) -> None:
        """Divide the summed gradient by the world size, matching DDP's averaging of the dense parameters."""
        if self.world_size > 1 and self.rows.weight.grad is not None:
            self.rows.weight.grad = self.rows.weight.grad.coalesce() / self.world_size

    @torch.no_grad()
    def rows_of(self, label_ids: np.ndarray, chunk: int = 1 << 16) -> torch.Tensor:
        """``[len(label_ids), dim]`` rows where every worker asks for its own ids (no gradients).

        A collective in rounds of at most ``chunk`` ids per worker: the round's requests are all-gathered,
        each owner fills in its rows and one all-reduce answers every worker, so a round moves
        ``world · chunk`` rows and no worker ever holds the table.
        """
        label_ids = np.asarray(label_ids, dtype=np.int64)
        weight = self.rows.weight
        if self.world_size == 1:
            return weight[self.local_rows(label_ids)].detach()
        import torch.distributed as dist

        counts = gather_rows(np.array([len(label_ids)], dtype=np.int64), weight.device)
        out = torch.empty(len(label_ids), self.dim, device=weight.device)
        for start in range(0, int(counts.max()), chunk):
            sizes = np.clip(counts - start, 0, chunk)
            asked = torch.from_numpy(gather_rows(label_ids[start:start + chunk], weight.device))
            asked = asked.to(weight.device)
            mine = (asked % self.world_size) == self.rank
            answer = torch.zeros(len(asked), self.dim, device=weight.device)
            answer[mine] = weight[asked[mine] // self.world_size].float()
            dist.all_reduce(answer)
            offset = int(sizes[:self.rank].sum())
            out[start:start + int(sizes[self.rank])] = answer[offset:offset + int(sizes[self.rank])]
        return out

    @torch.no_grad()
    def full_normalized(self) -> torch.Tensor:
        """All L rows, L2-normalised, on every worker (for evaluation; a dense gather, never per step)."""
        local = F.normalize(self.rows.weight.float(), dim=-1)
        if self.world_size == 1:
            return local
        import torch.distributed as dist

        size = -(-self.num_labels // self.world_size)
        padded = torch.zeros(size, self.dim, device=local.device)
        padded[: len(local)] = local
        gathered = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(gathered, padded)
        full = torch.empty(self.num_labels, self.dim, device=local.device)
        for rank, block in enumerate(gathered):
            count = len(range(rank, self.num_labels, self.world_size))
            full[rank::self.world_size] = block[:count]
        return full
