"""Which loss each head is trained with, and the criteria's parameters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Criterion = Literal["supcon", "decoupled", "balanced", "topk", "triplet"]


@dataclass(kw_only=True)
class LossConfig:
    """Args:
        de: criterion of the dual-encoder scores (prototype scores when the model has prototypes).
        clf: criterion of the classifier scores (default: the same as ``de``).
        lambda_de: weight λ of the DE terms; the classifier gets 1 − λ.
        positives_per_step: ``all`` positives in the numerator, or ``one`` sampled per query with its other
            positives masked out of every denominator (DEXML); softmax-type criteria only.
        inter_weight: with prototypes, the same criterion on the text-only label scores (PRIME's w_inter).
        dual_weight: the criterion on the transposed text-only scores: each pool label is an anchor and the
            batch's queries are its positives/negatives (PRIME's label→query term; UniDEC's dual loss).
        reg_weight, reg_margin: PRIME's prototype regulariser.
        topk_k, topk_alpha: DEXML's soft top-k target K and sigmoid sharpness α.
        margin_min, margin_max: dynamic margin range of the triplet loss (equal = fixed margin).
        fixed_margin: when > 0, a fixed triplet margin (overrides margin_min/margin_max); 0 = dynamic.
        triplet_negatives: top in-batch negatives per row of the triplet loss.
        triplet_tau: softmax temperature weighting violating negatives (1 = no weighting).
    """

    de: Criterion = "supcon"
    clf: Criterion | None = None
    lambda_de: float = 0.5
    positives_per_step: Literal["all", "one"] = "all"
    inter_weight: float = 1.0
    dual_weight: float = 0.0
    reg_weight: float = 0.0
    reg_margin: float = 0.1
    topk_k: int = 5
    topk_alpha: float = 2.0
    margin_min: float = 0.1
    margin_max: float = 0.3
    fixed_margin: float = 0.0
    triplet_negatives: int = 10
    triplet_tau: float = 0.1

    def validate(self) -> None:
        if not 0.0 <= self.lambda_de <= 1.0:
            raise ValueError(f"loss.lambda_de must be in [0, 1], got {self.lambda_de}")
        if self.margin_min > self.margin_max:
            raise ValueError(f"loss.margin_min ({self.margin_min}) must be <= "
                             f"loss.margin_max ({self.margin_max})")
        if self.topk_k < 1 or self.triplet_negatives < 1:
            raise ValueError("loss.topk_k and loss.triplet_negatives must be >= 1")
        if self.triplet_tau <= 0:
            raise ValueError(f"loss.triplet_tau must be > 0, got {self.triplet_tau}")

    def margins(self) -> tuple[float, float]:
        """(m_min, m_max) of the triplet loss."""
        if self.fixed_margin > 0:
            return self.fixed_margin, self.fixed_margin
        return self.margin_min, self.margin_max
