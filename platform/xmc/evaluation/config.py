"""Evaluation settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from xmc.mining.ann import AnnConfig


@dataclass(kw_only=True)
class EvalConfig:
    """How predictions are made for evaluation.

    Args:
        top_k: candidates retrieved per test point before filtering (100 also gives R@100).
        ann: index used to retrieve them (exact inner product by default).
        split: ``test``, or ``validation`` (the hold-out of ``dataset.validation_fraction``, for model
            selection that never looks at the test split).
    """

    top_k: int = 100
    split: Literal["test", "validation"] = "test"
    ann: AnnConfig = field(default_factory=AnnConfig)

    def validate(self) -> None:
        if self.top_k < 5:
            raise ValueError(f"eval.top_k must be >= 5 (P@5 needs 5 predictions), got {self.top_k}")
