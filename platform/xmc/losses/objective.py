"""The training objective of one step, composed from the configured criteria: a pure function of the
step's cosine score matrices.

Every method is this one function with other settings (``configs/methods/``):

- DE side: the criterion on prototype scores (PRIME) or on text scores; with prototypes also
  ``inter_weight`` × the criterion on text scores and ``reg_weight`` × the prototype regulariser;
  ``dual_weight`` × the label→query criterion on the transposed text scores (each pool label is an anchor,
  the batch's queries its positives and negatives);
- classifier side, when the model has one: the classifier criterion on the classifier scores;
- ``loss = λ · DE + (1 − λ) · classifier``.
"""

from __future__ import annotations

import torch

from xmc.losses.config import LossConfig
from xmc.losses.criteria import make_criterion
from xmc.losses.triplet import prototype_regularizer


def step_loss(text: torch.Tensor, targets: torch.Tensor, row_mask: torch.Tensor | None, config: LossConfig,
              scale: float, *, proto: torch.Tensor | None = None, clf: torch.Tensor | None = None,
              generator: torch.Generator | None = None, positive_weights: torch.Tensor | None = None
              ) -> torch.Tensor:
    """The configured loss of queries against a label pool.

    Args:
        text: cosines ``[B, P]`` of the queries' DE embeddings against the pool labels' text embeddings.
        targets: bool ``[B, P]``, True where pool label j is a positive of query i.
        row_mask: bool ``[B]``, False for queries that must not contribute (or None).
        config: which criteria and weights.
        scale: similarity scale 1/τ of the softmax-type criteria.
        proto: cosines against the pool labels' prototypes (PRIME), or None.
        clf: cosines of the queries' classifier embeddings against the pool labels' classifier rows, or None
            for a model without a classifier.
        generator: the step's random generator (positive draws), so a resumed step draws the same.
        positive_weights: ``[P]`` weights of the positive draws (inverse propensities), or None.
    """
    criterion = make_criterion(config.de, config, scale, generator, positive_weights)
    if proto is not None:
        loss = criterion(proto, targets, row_mask)
        if config.inter_weight:
            loss = loss + config.inter_weight * criterion(text, targets, row_mask)
        if config.reg_weight:
            loss = loss + config.reg_weight * prototype_regularizer(
                text, proto, targets, row_mask, config.triplet_negatives, config.reg_margin, generator)
    else:
        loss = criterion(text, targets, row_mask)
    if config.dual_weight:
        dual = make_criterion(config.de, config, scale, generator)
        loss = loss + config.dual_weight * dual(text.T, targets.T, targets.any(dim=0))
    if clf is None:
        return loss
    classifier = make_criterion(config.clf or config.de, config, scale, generator, positive_weights)
    return config.lambda_de * loss + (1.0 - config.lambda_de) * classifier(clf, targets, row_mask)
