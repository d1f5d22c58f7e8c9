"""Build the configured criteria as functions of *cosine* score matrices.

Softmax-type criteria (supcon, decoupled, balanced, soft top-k) scale cosines by ``scale`` = 1/τ into
logits; the triplet loss works on cosines directly (its margins are in cosine units). The training loop
calls ``criterion(cosines, targets, row_mask)`` whatever the method: recipes choose criteria in config, the
loop never branches on method names.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from xmc.losses.config import LossConfig
from xmc.losses.multilabel import LOSSES
from xmc.losses.topk import soft_topk_loss
from xmc.losses.triplet import dynamic_margin_triplet, sample_one_positive

CriterionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def keep_one_positive(logits: torch.Tensor, targets: torch.Tensor, generator: torch.Generator | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """One sampled positive per row as the target; the row's other positives masked to −inf."""
    chosen = torch.zeros_like(targets)
    rows = torch.arange(len(targets), device=targets.device)
    chosen[rows, sample_one_positive(targets, generator=generator)] = True
    chosen &= targets
    return logits.masked_fill(targets & ~chosen, float("-inf")), chosen


def make_criterion(name: str, config: LossConfig, scale: float, generator: torch.Generator | None = None,
                   positive_weights: torch.Tensor | None = None) -> CriterionFn:
    """``fn(cosines [B, P], targets [B, P], row_mask [B] | None) -> loss``."""
    if name == "triplet":
        margin_min, margin_max = config.margins()

        def triplet(cos, targets, row_mask=None):
            return dynamic_margin_triplet(cos, targets, row_mask, config.triplet_negatives, margin_min,
                                          margin_max, config.triplet_tau, positive_weights,
                                          generator=generator)
        return triplet
    if name == "topk":
        def topk(cos, targets, row_mask=None):
            return soft_topk_loss(scale * cos, targets, row_mask, config.topk_k, config.topk_alpha, generator)
        return topk
    core = LOSSES[name]

    def softmax_type(cos, targets, row_mask=None):
        logits = scale * cos.float()
        if config.positives_per_step == "one":
            logits, targets = keep_one_positive(logits, targets.bool(), generator)
        return core(logits, targets, row_mask)
    return softmax_type
