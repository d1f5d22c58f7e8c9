"""PRIME's dynamic-margin triplet loss with online hard negatives, and its prototype regulariser.

Both work on *cosine* similarities (margins are in cosine units), not on scaled logits.

Triplet T(S, Y), per row i (NGAME/PRIME "OHNM"):

- one positive p drawn among the row's positives (uniformly, or with the given per-column weights, e.g.
  inverse propensities),
- the ``num_negatives`` highest-scoring negatives n,
- a margin that grows with the violation but is not differentiated: m_in = clamp(|s_ip − s_in|, m_min, m_max),
- hinge e_in = max(0, s_in − s_ip + m_in); with ``tau`` < 1 ("aggressive" weighting) each hinge is weighted
  by a softmax of s_in / τ over the row's violating negatives,
- summed over the negatives, averaged over rows.

For correctly ordered pairs the margin is effectively m_min; a violation by d costs d + clamp(d, m_min,
m_max), so the penalty grows with the size of the violation. ``margin_min == margin_max`` gives the
classic fixed-margin triplet loss.
"""

from __future__ import annotations

import torch

from xmc.losses.multilabel import at_least_fp32


def sample_one_positive(targets: torch.Tensor, weights: torch.Tensor | None = None,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """Column index of one positive per row (rows without positives get 0; mask them separately)."""
    probs = targets.float() if weights is None else targets.float() * weights.float().clamp_min(0)
    empty = probs.sum(dim=1) == 0
    probs = torch.where(empty[:, None], torch.ones_like(probs), probs)
    return torch.multinomial(probs.double(), 1, generator=generator).squeeze(1)


def dynamic_margin_triplet(scores: torch.Tensor, targets: torch.Tensor, row_mask: torch.Tensor | None = None,
                           num_negatives: int = 10, margin_min: float = 0.1, margin_max: float = 0.3,
                           tau: float = 0.1, positive_weights: torch.Tensor | None = None,
                           positive: torch.Tensor | None = None,
                           generator: torch.Generator | None = None) -> torch.Tensor:
    """T(S, Y) as described in the module docstring.

    ``positive_weights`` ([P] or [B, P]) weights the positive draw; ``positive`` ([B]) fixes it instead.
    """
    scores = at_least_fp32(scores)
    targets = targets.bool()
    if positive is None:
        weights = None if positive_weights is None else positive_weights.expand(targets.shape)
        positive = sample_one_positive(targets, weights, generator)
    rows = _rows_with_positive_and_negative(targets, row_mask)
    if not bool(rows.any()):
        return scores.sum() * 0.0
    scores, targets, positive = scores[rows], targets[rows], positive[rows]
    pos_score = scores.gather(1, positive[:, None])
    k = min(num_negatives, scores.shape[1])
    neg_scores, _ = scores.masked_fill(targets, float("-inf")).topk(k, dim=1)
    valid = torch.isfinite(neg_scores)
    neg_scores = torch.where(valid, neg_scores, torch.zeros_like(neg_scores))
    margin = (pos_score - neg_scores).abs().clamp(margin_min, margin_max).detach()
    hinge = torch.relu(neg_scores - pos_score + margin) * valid
    if tau != 1.0:
        violating = hinge > 0
        logits = (neg_scores / tau).masked_fill(~violating, float("-inf"))
        weights = torch.softmax(logits, dim=1).nan_to_num(0.0)  # rows with no violation: all 0
        hinge = hinge * weights
    return hinge.sum(dim=1).mean()


def _rows_with_positive_and_negative(targets: torch.Tensor, row_mask: torch.Tensor | None) -> torch.Tensor:
    """Rows a ranking term is defined on: at least one positive and one negative (and in ``row_mask``)."""
    rows = targets.any(dim=1) & ((~targets).any(dim=1))
    return rows if row_mask is None else rows & row_mask.bool()


def _mean_nonzero(values: torch.Tensor) -> torch.Tensor:
    nonzero = values > 0
    return values.sum() / nonzero.sum().clamp_min(1)


def prototype_regularizer(text_scores: torch.Tensor, proto_scores: torch.Tensor, targets: torch.Tensor,
                          row_mask: torch.Tensor | None = None, num_negatives: int = 10, margin: float = 0.1,
                          generator: torch.Generator | None = None) -> torch.Tensor:
    """PRIME's R: prototypes should bring positives closer than the label text does, and push negatives
    further away.

    ``R = ½ [mean_{>0} max(0, S^i_ip − S^f_ip + m) + mean_{>0} max(0, S^f_in − S^i_in + m)]`` with one drawn
    positive per row and the top-``num_negatives`` negatives by prototype score.
    """
    text_scores, proto_scores = at_least_fp32(text_scores), at_least_fp32(proto_scores)
    targets = targets.bool()
    rows = _rows_with_positive_and_negative(targets, row_mask)
    if not bool(rows.any()):
        return proto_scores.sum() * 0.0
    text_scores, proto_scores, targets = text_scores[rows], proto_scores[rows], targets[rows]
    positive = sample_one_positive(targets, generator=generator)[:, None]
    pos_term = torch.relu(text_scores.gather(1, positive) - proto_scores.gather(1, positive) + margin)
    k = min(num_negatives, proto_scores.shape[1])
    _, negatives = proto_scores.masked_fill(targets, float("-inf")).topk(k, dim=1)
    valid = ~targets.gather(1, negatives)
    neg_gap = proto_scores.gather(1, negatives) - text_scores.gather(1, negatives)
    neg_term = torch.relu(neg_gap + margin) * valid
    return 0.5 * (_mean_nonzero(pos_term) + _mean_nonzero(neg_term))
