"""What a training worker reads: the prepared dataset, its token cache, the training positives, the
validation hold-out and the label statistics derived from the points that remain."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from xmc.data.dataset import PreparedDataset
from xmc.data.lengths import token_cache
from xmc.data.split import TrainingSplit
from xmc.data.tokens import TokenCache
from xmc.experiment import ExperimentConfig
from xmc.models.encoder import resolve_model_dir


@dataclass
class TrainingData:
    dataset: PreparedDataset
    cache: TokenCache
    positives: sp.csr_matrix  # train points × labels
    split: TrainingSplit
    label_weights: np.ndarray  # inverse propensities, counted on the training rows
    cold_start: np.ndarray  # labels no training row is tagged with

    @classmethod
    def load(cls, config: ExperimentConfig, progress: bool = False) -> TrainingData:
        data = config.dataset
        dataset = PreparedDataset(data.prepared)
        cache = token_cache(dataset, data, resolve_model_dir(config.encoder.model), progress=progress)
        split = TrainingSplit.of(dataset, data)
        weights = dataset.inverse_propensity(data.propensity_a, data.propensity_b, split.propensity_rows)
        return cls(dataset, cache, dataset.label_matrix("train"), split, weights,
                   split.cold_start_labels(dataset))

    @property
    def num_labels(self) -> int:
        return self.dataset.num_labels

    @property
    def train_rows(self) -> np.ndarray:
        return self.split.train_rows
