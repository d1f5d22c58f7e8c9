"""Which training points train a model and which are held out to validate it, and which labels that leaves
without a training positive."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xmc.data.config import DatasetConfig
from xmc.data.dataset import PreparedDataset


def split_validation(rows: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train_rows, validation_rows)``: a fixed random hold-out of ``fraction`` of ``rows`` (both
    sorted)."""
    if fraction <= 0:
        return rows, rows[:0]
    count = max(1, int(round(len(rows) * fraction)))
    held = np.sort(np.random.default_rng(seed).choice(rows, count, replace=False))
    return np.setdiff1d(rows, held), held


@dataclass(frozen=True)
class TrainingSplit:
    """The labelled training points, split into those a model trains on and a validation hold-out.

    A held-out point never enters training: not its batches, shortlists, clusters or label counts. So a
    label whose positives are all held out is a cold-start label to the model, as test-only labels are.
    """

    train_rows: np.ndarray
    validation_rows: np.ndarray

    @classmethod
    def of(cls, dataset: PreparedDataset, config: DatasetConfig) -> TrainingSplit:
        positives = dataset.label_matrix("train")
        labelled = np.flatnonzero(np.diff(positives.indptr) > 0)
        return cls(*split_validation(labelled, config.validation_fraction, config.validation_seed))

    @property
    def propensity_rows(self) -> np.ndarray | None:
        """The points propensities are counted on: the training rows with a hold-out, else all points."""
        return self.train_rows if len(self.validation_rows) else None

    def cold_start_labels(self, dataset: PreparedDataset) -> np.ndarray:
        """Labels no training row is tagged with: the classifier never sees them as positives."""
        return np.flatnonzero(dataset.train_label_counts(self.train_rows) == 0)
