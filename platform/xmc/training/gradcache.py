"""Gradient caching (GradCache, Gao et al. 2021) for DEXML's "all labels in every step".

Scoring each query against all L labels needs all L label embeddings with their graph, far more activation
memory than a step can hold. The trick computes the same gradient in two passes:

1. encode every label chunk without a graph, recording each chunk's RNG state;
2. compute the loss of the queries (with their graph) against those embeddings as leaf tensors and
   back-propagate: this gives the query side's parameter gradients and the gradient w.r.t. every label
   embedding;
3. re-encode each chunk *with* a graph, replaying its RNG state so that dropout draws the same masks, and
   back-propagate ``<embedding, cached gradient>``: by the chain rule the parameter gradients add up to
   those of the one-pass computation.

With several workers each encodes a share of the labels; embeddings are all-gathered for the loss, and
the cached label gradients are summed over workers (every worker's loss depends on every label) before
each worker replays its own share.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch


def rng_snapshot(device: torch.device) -> tuple:
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def rng_restore(snapshot: tuple, device: torch.device) -> None:
    torch.set_rng_state(snapshot[0])
    if snapshot[1] is not None:
        torch.cuda.set_rng_state(snapshot[1], device)


def cached_step(encode_labels: Callable[[int], torch.Tensor], num_chunks: int,
                encode_queries: Callable[[], dict[str, torch.Tensor]],
                loss_fn: Callable[[dict[str, torch.Tensor], torch.Tensor], torch.Tensor],
                gather_labels: Callable[[torch.Tensor], torch.Tensor],
                reduce_label_grad: Callable[[torch.Tensor], torch.Tensor], device: torch.device,
                no_sync: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
                ) -> torch.Tensor:
    """Run one gradient-cached forward/backward; parameter ``.grad`` ends up as for the plain computation.

    Only the labels take the two-pass route; the batch's queries are few enough to keep their graph, so
    they are encoded once and back-propagated directly.

    Args:
        encode_labels: chunk index -> this worker's label embeddings of that chunk (with graph if grad on).
        num_chunks: chunks of this worker's share of the labels.
        encode_queries: -> dict of query embeddings (e.g. ``query_de``), with graph.
        loss_fn: (query embeddings, all label embeddings) -> scalar loss.
        gather_labels: this worker's label embeddings -> all workers' (no gradient needed).
        reduce_label_grad: gradient w.r.t. all label embeddings -> this worker's share, summed over workers.
        no_sync: context suppressing DDP's gradient all-reduce; every backward but the last runs inside it,
            so the last label replay synchronises everything accumulated.
    Returns:
        the loss (detached).
    """
    snapshots: list[tuple] = []
    with torch.no_grad():
        local_parts = []
        for chunk in range(num_chunks):
            snapshots.append(rng_snapshot(device))
            local_parts.append(encode_labels(chunk))
    labels = gather_labels(torch.cat(local_parts)).detach().requires_grad_()
    with no_sync():
        loss = loss_fn(encode_queries(), labels)
        loss.backward()  # query-side parameter gradients, and the cached gradient of every label embedding
    label_grad = reduce_label_grad(labels.grad if labels.grad is not None else torch.zeros_like(labels))

    after = rng_snapshot(device)
    offsets = [0]
    for part in local_parts:
        offsets.append(offsets[-1] + len(part))
    for chunk, snapshot in enumerate(snapshots):
        with no_sync() if chunk < num_chunks - 1 else contextlib.nullcontext():
            rng_restore(snapshot, device)
            embeddings = encode_labels(chunk)
            (embeddings.float() * label_grad[offsets[chunk]:offsets[chunk + 1]]).sum().backward()
    rng_restore(after, device)
    return loss.detach()


def chunk_bounds(count: int, chunk_size: int) -> Sequence[tuple[int, int]]:
    return [(start, min(start + chunk_size, count)) for start in range(0, count, chunk_size)]
