"""Evaluation settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from xmc.mining.config import AnnConfig


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


@dataclass(kw_only=True)
class CalibrateConfig:
    """What ``jobs/calibrate.py`` searches on a run's validation hold-out (see
    :mod:`xmc.evaluation.calibration`).

    Args:
        checkpoint: checkpoint directory name in the run ("" = the latest).
        metric: the validation metric to maximise (a key of metrics.json, e.g. ``P@1`` or ``nDCG@5``).
        de_weights: candidate weights of cos_DE in the fused score (the classifier's weight stays 1).
        cold_start_offsets: candidate offsets added to labels without training positives (cosine units; the
            fused score of two heads spans [-2, 2]).
        clf_untrained: candidate ways of scoring those labels on the classifier side.
        neighbour_weights: candidate weights of the query-neighbour channel (``model.neighbour_weight``),
            tried on the best point of the grid above; [0] (or an empty list) leaves it off without
            encoding the training queries it needs.
        top_k: predictions kept per query while scoring the grid (10 gives every metric up to R@10).
    """

    checkpoint: str = ""
    metric: str = "P@1"
    de_weights: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    cold_start_offsets: list[float] = field(
        default_factory=lambda: [0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5])
    clf_untrained: list[str] = field(default_factory=lambda: ["table", "label_text"])
    neighbour_weights: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0])
    top_k: int = 10

    def validate(self) -> None:
        if not self.de_weights or min(self.de_weights) < 0:
            raise ValueError(f"de_weights must be a non-empty list of numbers >= 0, got {self.de_weights}")
        if not self.cold_start_offsets:
            raise ValueError("cold_start_offsets must list at least one offset (0 = none)")
        unknown = set(self.clf_untrained) - {"table", "label_text"}
        if not self.clf_untrained or unknown:
            raise ValueError(f"clf_untrained must list 'table' and/or 'label_text', got {self.clf_untrained}")
        if self.top_k < 5:
            raise ValueError(f"top_k must be >= 5 (P@5 needs 5 predictions), got {self.top_k}")
        if any(weight < 0 for weight in self.neighbour_weights):
            raise ValueError(f"neighbour_weights must be numbers >= 0, got {self.neighbour_weights}")
