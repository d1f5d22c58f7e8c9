"""Multi-positive classification losses over a label pool: pure functions of a score matrix and masks.

Every function takes

- ``logits``: float tensor ``[B, P]``, the scaled similarities ``s_ij = scale · <q_i, z_j>`` of B queries
  against the P labels of the batch's pool,
- ``targets``: bool tensor ``[B, P]``, True where pool label j is a positive of query i (built from *all*
  positives of i, so a positive is never treated as a negative),
- ``row_mask``: optional bool tensor ``[B]``, False for rows that must not contribute (e.g. a query whose
  positives all fell out of a capped pool),

and returns the mean loss over the contributing rows (0 if there are none). A column set to −inf is left
out of the row's denominators (that is how other positives are masked when one positive is sampled per
step, DEXML's ``loss_sample``). Computation is in float32
whatever the input dtype: logsumexp over large pools is not safe in half precision.

Relations: :func:`supcon` is the multi-positive InfoNCE of UniDEC/SupCon (positives compete with each
other in the denominator); :func:`decoupled_softmax` is DEXML's fix (each positive only competes with the
negatives); :func:`balanced_supcon` sits between them (positives count 1/n_i each in the denominator).
"""

from __future__ import annotations

import torch

_NEG_INF = float("-inf")


def at_least_fp32(tensor: torch.Tensor) -> torch.Tensor:
    """Half-precision scores are upcast for the loss; float64 stays float64 (gradcheck)."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def _prepare(logits: torch.Tensor, targets: torch.Tensor, row_mask: torch.Tensor | None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    logits = at_least_fp32(logits)
    targets = targets.bool()
    num_pos = targets.sum(dim=1)
    rows = num_pos > 0
    if row_mask is not None:
        rows = rows & row_mask.bool()
    return logits, targets, num_pos.clamp_min(1).to(logits.dtype), rows


def _sum_over_positives(log_prob: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    # where, not multiplication: masked-out columns hold -inf, and -inf * 0 is nan
    return torch.where(targets, log_prob, torch.zeros_like(log_prob)).sum(dim=1)


def _mean_over_rows(per_row: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    if not bool(rows.any()):
        return per_row.sum() * 0.0  # keeps the graph (and DDP's gradient hooks) intact
    return per_row[rows].mean()


def supcon(logits: torch.Tensor, targets: torch.Tensor, row_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-positive InfoNCE: ``l_i = -1/n_i · Σ_{p∈P_i} [s_ip − logsumexp_j s_ij]`` (all pool labels in the
    denominator, positives included)."""
    logits, targets, num_pos, rows = _prepare(logits, targets, row_mask)
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    per_row = -_sum_over_positives(log_prob, targets) / num_pos
    return _mean_over_rows(per_row, rows)


def decoupled_softmax(logits: torch.Tensor, targets: torch.Tensor, row_mask: torch.Tensor | None = None
                      ) -> torch.Tensor:
    """DEXML's decoupled softmax: ``l_i = -1/n_i · Σ_p log(e^{s_ip} / (e^{s_ip} + Σ_{n∉P_i} e^{s_in}))``.

    Other positives are removed from each positive's denominator, so positives never compete.
    """
    logits, targets, num_pos, rows = _prepare(logits, targets, row_mask)
    negatives_lse = torch.logsumexp(logits.masked_fill(targets, _NEG_INF), dim=1, keepdim=True)
    log_prob = logits - torch.logaddexp(logits, negatives_lse)
    per_row = -_sum_over_positives(log_prob, targets) / num_pos
    return _mean_over_rows(per_row, rows)


def balanced_supcon(logits: torch.Tensor, targets: torch.Tensor, row_mask: torch.Tensor | None = None
                    ) -> torch.Tensor:
    """Like :func:`supcon`, with each positive weighted 1/n_i (negatives 1) inside the denominator."""
    logits, targets, num_pos, rows = _prepare(logits, targets, row_mask)
    log_weights = torch.where(targets, -torch.log(num_pos)[:, None], torch.zeros_like(logits))
    log_denominator = torch.logsumexp(logits + log_weights, dim=1, keepdim=True)
    per_row = -_sum_over_positives(logits - log_denominator, targets) / num_pos
    return _mean_over_rows(per_row, rows)


LOSSES = {"supcon": supcon, "decoupled": decoupled_softmax, "balanced": balanced_supcon}
