"""Which loss each head is trained with."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

LossName = Literal["supcon", "decoupled", "balanced"]


@dataclass(kw_only=True)
class LossConfig:
    """Args:
        de: loss of the dual-encoder scores over the pool.
        clf: loss of the classifier scores (default: the same as ``de``).
        lambda_de: weight λ of the DE loss; the classifier gets 1 − λ.
    """

    de: LossName = "supcon"
    clf: LossName | None = None
    lambda_de: float = 0.5

    def validate(self) -> None:
        if not 0.0 <= self.lambda_de <= 1.0:
            raise ValueError(f"loss.lambda_de must be in [0, 1], got {self.lambda_de}")
