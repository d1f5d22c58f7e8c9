"""Collectives beyond DDP's gradient averaging, and how work is split between workers.

With one process every collective is a no-op, so the same per-worker code runs unchanged on 1 or N workers.
Two ways of splitting exist, for two needs: :func:`my_share` (contiguous, sizes differ by at most one) for
work whose results are gathered back in order, and :func:`equal_share` (every worker the same count,
padded by wrapping around) where every worker must run the same forward/backward shape, as DDP's gradient
averaging assumes. Label ownership of the sharded tables (``label % world``) lives with the tables.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_world() -> tuple[int, int]:
    if is_distributed():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def mean_over_workers(value: float, device: torch.device | str = "cpu") -> float:
    """The mean of a scalar over workers (the loss each worker computed on its share of the batch)."""
    if not is_distributed():
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor.item()) / dist.get_world_size()


def share_sizes(count: int, world_size: int) -> list[int]:
    """Sizes of the contiguous shares of ``count`` items (:func:`my_share`), worker by worker."""
    return [len(part) for part in np.array_split(np.arange(count), world_size)]


def my_share(rows: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """This worker's contiguous share of ``rows`` (shares differ in size by at most one)."""
    return np.array_split(rows, world_size)[rank]


def equal_share(count: int, rank: int, world_size: int) -> np.ndarray:
    """Positions ``0..count-1`` this worker takes when every worker must take the same number: the positions
    are padded by wrapping around to a multiple of the world size (as torch's DistributedSampler does), then
    split into contiguous blocks, so concatenating the blocks in rank order and cutting at ``count`` restores
    the original order."""
    if world_size == 1:
        return np.arange(count)
    per_worker = -(-count // world_size)
    return np.resize(np.arange(count), per_worker * world_size)[rank * per_worker:(rank + 1) * per_worker]


class _AllReduceSum(torch.autograd.Function):
    """y = Σ_r x_r on every worker. Every worker's loss depends on y, so dL/dx_r = Σ_r' dL_r'/dy: the
    backward is again an all-reduce of the incoming gradients."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad


class _AllGatherRows(torch.autograd.Function):
    """Concatenate equal-sized row blocks of all workers; the backward returns to each worker the rows of
    the summed gradient that belong to its own block."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        ctx.rows = len(tensor)
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        start = dist.get_rank() * ctx.rows
        return grad[start:start + ctx.rows]


def all_reduce_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over workers, differentiable (see :class:`_AllReduceSum`)."""
    return _AllReduceSum.apply(tensor) if is_distributed() else tensor


def all_gather_with_grad(local: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Concatenate every worker's ``local`` (worker r has ``sizes[r]`` rows), keeping gradients: the
    backward sends each worker the gradient of its own rows, summed over all workers' losses."""
    if not is_distributed():
        return local
    width = max(sizes)
    padded = torch.cat([local, local.new_zeros(width - len(local), *local.shape[1:])]) if len(local) < width \
        else local
    gathered = _AllGatherRows.apply(padded)
    return torch.cat([gathered[r * width:r * width + size] for r, size in enumerate(sizes)])


def reduce_scatter_rows(tensor: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Worker r's block of rows (``sizes[r]`` rows after the blocks of lower ranks) of the sum of ``tensor``
    over workers: each block is reduced to its worker alone, so no worker receives the others' sums (an
    all-reduce would send every worker every row). One reduce per worker works on NCCL and gloo alike."""
    if not is_distributed():
        return tensor
    rank = dist.get_rank()
    starts = np.concatenate([[0], np.cumsum(sizes)])
    mine = None
    for owner, (start, stop) in enumerate(zip(starts[:-1], starts[1:])):
        block = tensor[int(start):int(stop)].contiguous()
        dist.reduce(block, dst=owner)
        if owner == rank:
            mine = block
    return mine


def gather_rows(local: np.ndarray, device: torch.device | str = "cpu") -> np.ndarray:
    """Concatenate every worker's rows (no gradients; any sizes, same trailing shape and dtype).

    A worker with no rows may not know the trailing shape (an encoder that saw no input returns ``[0, 0]``):
    it takes the shape of the worker with the most rows.
    """
    if not is_distributed():
        return local
    shape = torch.tensor(local.shape, dtype=torch.long, device=device)
    shapes = [torch.zeros_like(shape) for _ in range(dist.get_world_size())]
    dist.all_gather(shapes, shape)
    sizes = [int(s[0]) for s in shapes]
    trailing = tuple(int(d) for d in shapes[int(np.argmax(sizes))][1:])
    if len(local) == 0:
        local = np.zeros((0, *trailing), dtype=local.dtype)
    tensor = torch.from_numpy(np.ascontiguousarray(local)).to(device)
    padded = torch.zeros((max(sizes), *trailing), dtype=tensor.dtype, device=device)
    padded[: len(tensor)] = tensor
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([part[:n] for part, n in zip(parts, sizes)]).cpu().numpy()


def gather_rows_to_first(local: np.ndarray, device: torch.device | str = "cpu") -> list[np.ndarray] | None:
    """Every worker's rows, on rank 0 alone (worker by worker; None on the others): for work that one
    process does over everything once, without every worker receiving everything."""
    if not is_distributed():
        return [local]
    sizes = [int(n) for n in gather_rows(np.array([len(local)], dtype=np.int64), device)]
    tensor = torch.from_numpy(np.ascontiguousarray(local)).to(device)
    padded = torch.zeros((max(sizes), *local.shape[1:]), dtype=tensor.dtype, device=device)
    padded[: len(tensor)] = tensor
    parts = [torch.empty_like(padded) for _ in sizes] if dist.get_rank() == 0 else None
    dist.gather(padded, parts, dst=0)
    if parts is None:
        return None
    return [part[:n].cpu().numpy() for part, n in zip(parts, sizes)]


def scatter_rows(blocks: list[np.ndarray] | None, device: torch.device | str = "cpu") -> np.ndarray:
    """Rank 0's ``blocks[r]`` on worker r (the other ranks pass None): each worker receives its block only."""
    if not is_distributed():
        assert blocks is not None
        return blocks[0]
    meta = [None]
    if dist.get_rank() == 0:
        meta = [([len(block) for block in blocks], blocks[0].shape[1:], str(blocks[0].dtype))]
    dist.broadcast_object_list(meta, src=0)
    sizes, trailing, dtype = meta[0]
    torch_dtype = getattr(torch, np.dtype(dtype).name)
    out = torch.empty((max(sizes), *trailing), dtype=torch_dtype, device=device)
    parts = None
    if dist.get_rank() == 0:
        parts = []
        for block in blocks:
            padded = torch.zeros_like(out)
            padded[: len(block)] = torch.from_numpy(np.ascontiguousarray(block)).to(device)
            parts.append(padded)
    dist.scatter(out, parts, src=0)
    return out[: sizes[dist.get_rank()]].cpu().numpy()


def broadcast_array(array: np.ndarray | None, device: torch.device | str = "cpu", src: int = 0) -> np.ndarray:
    """Rank ``src``'s array on every worker (other ranks may pass None)."""
    if not is_distributed():
        assert array is not None
        return array
    meta = [None]
    if dist.get_rank() == src:
        meta = [(array.shape, str(array.dtype))]
    dist.broadcast_object_list(meta, src=src)
    shape, dtype = meta[0]
    tensor = torch.from_numpy(np.ascontiguousarray(array)).to(device) if dist.get_rank() == src else \
        torch.empty(shape, dtype=getattr(torch, np.dtype(dtype).name), device=device)
    dist.broadcast(tensor, src=src)
    return tensor.cpu().numpy()
