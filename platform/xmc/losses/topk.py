"""DEXML's soft top-k loss: make the positives land inside a smooth top-K of each row.

For row i a threshold t_i is found by bisection such that ``Σ_j σ(α(s_ij + t_i)) = K``; then
``π_ij = σ(α(s_ij + t_i))`` is a soft "label j is in the top K" indicator, and the loss is
``-1/|P̃_i| Σ_{p∈P̃_i} log π_ip`` over (at most K) sampled positives, other positives masked out.

The bisection itself is not differentiated: the gradient comes from the implicit function theorem. With
``v_ij = α σ'(α(s_ij + t_i))``, the constraint gives ``dt_i/ds_ik = −v_ik / Σ_m v_im`` and hence

    dπ_ij / ds_ik = v_ij (δ_jk − v_ik / Σ_m v_im).

K is the metric target: soft top-5 favours P@5, soft top-100 favours R@100 (DEXML, ICLR 2024).
"""

from __future__ import annotations

import torch

from xmc.losses.multilabel import at_least_fp32

_NEG_INF = float("-inf")


def soft_topk_threshold(logits: torch.Tensor, k: torch.Tensor, alpha: float,
                        iterations: int = 48) -> torch.Tensor:
    """t [B] with ``Σ_j σ(α(s_ij + t_i)) = k_i`` (masked entries are −inf and contribute 0)."""
    finite = torch.isfinite(logits)
    low_s = torch.where(finite, logits, torch.full_like(logits, float("inf"))).amin(dim=1)
    high_s = torch.where(finite, logits, torch.full_like(logits, -float("inf"))).amax(dim=1)
    # Σ σ(α(s + t)) is increasing in t; these bounds bracket any k in (0, n_valid)
    span = 30.0 / alpha
    low, high = -high_s - span, -low_s + span
    for _ in range(iterations):
        mid = (low + high) / 2
        total = torch.sigmoid(alpha * (logits + mid[:, None])).sum(dim=1)
        too_many = total > k
        high = torch.where(too_many, mid, high)
        low = torch.where(too_many, low, mid)
    return (low + high) / 2


class SoftTopK(torch.autograd.Function):
    """π = σ(α(s + t(s))) with the implicit gradient through the threshold t."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, k: torch.Tensor, alpha: float, iterations: int) -> torch.Tensor:
        with torch.no_grad():
            threshold = soft_topk_threshold(logits, k, alpha, iterations)
            pi = torch.sigmoid(alpha * (logits + threshold[:, None]))
        ctx.save_for_backward(pi)
        ctx.alpha = alpha
        return pi

    @staticmethod
    def backward(ctx, grad_pi: torch.Tensor):
        (pi,) = ctx.saved_tensors
        v = ctx.alpha * pi * (1 - pi)
        total_v = v.sum(dim=1, keepdim=True).clamp_min(1e-30)
        weighted = (grad_pi * v).sum(dim=1, keepdim=True)
        grad_logits = grad_pi * v - v * weighted / total_v
        return grad_logits, None, None, None


def soft_topk(logits: torch.Tensor, k: torch.Tensor | int, alpha: float = 2.0,
              iterations: int = 48) -> torch.Tensor:
    """Soft top-k memberships π (same shape as ``logits``; −inf entries get π = 0)."""
    if not torch.is_tensor(k):
        k = torch.full((logits.shape[0],), float(k), dtype=logits.dtype, device=logits.device)
    return SoftTopK.apply(logits, k.to(logits.dtype), alpha, iterations)


def soft_topk_loss(logits: torch.Tensor, targets: torch.Tensor, row_mask: torch.Tensor | None = None,
                   k: int = 5, alpha: float = 2.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """-mean log π over ``min(k, n_i)`` sampled positives per row; the row's other positives are masked.

    Rows need more valid (unmasked) columns than their K; K is lowered to ``n_valid − 1`` otherwise (a pool
    smaller than K cannot express "in the top K").
    """
    logits = at_least_fp32(logits)
    targets = targets.bool()
    # draw min(k, n_i) positives per row uniformly (Gumbel top-k over the positives)
    keys = torch.rand(logits.shape, generator=generator, device=logits.device)
    keys = torch.where(targets, keys, torch.full_like(keys, -1.0))
    num_pos = targets.sum(dim=1)
    take = num_pos.clamp(max=k)
    rank = keys.argsort(dim=1, descending=True).argsort(dim=1)
    chosen = targets & (rank < take[:, None])
    masked = logits.masked_fill(targets & ~chosen, _NEG_INF)
    valid = torch.isfinite(masked).sum(dim=1)
    k_eff = torch.minimum(torch.full_like(valid, k), valid - 1).clamp_min(1).to(logits.dtype)
    rows = (num_pos > 0) & (valid > 1)
    if row_mask is not None:
        rows = rows & row_mask.bool()
    if not bool(rows.any()):
        return logits.sum() * 0.0
    pi = soft_topk(masked[rows], k_eff[rows], alpha)
    log_pi = torch.log(pi.clamp_min(1e-30))
    per_row = -(log_pi * chosen[rows]).sum(dim=1) / take[rows].to(logits.dtype)
    return per_row.mean()
