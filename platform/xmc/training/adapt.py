"""Settings a run leaves to the data, chosen before training and recorded with their reasons.

A user who writes a dataset file with its source and text fields and picks a method gets settings fitted to
the data: the token lengths of queries and labels (:mod:`xmc.data.lengths`), and the epochs of a step
budget (``train.steps``). Each choice lands in the run's resolved ``config.yaml`` under ``adapted``
(setting -> value and why), so the run says what it trained with and a rerun of it chooses the same.
"""

from __future__ import annotations

import copy
import math

from xmc.data.dataset import PreparedDataset
from xmc.data.lengths import choose_lengths
from xmc.data.split import TrainingSplit
from xmc.experiment import ExperimentConfig
from xmc.models.encoder import resolve_model_dir


def adapt_to_data(config: ExperimentConfig, dataset: PreparedDataset) -> ExperimentConfig:
    """A copy of ``config`` with every setting left to the data chosen, each in ``config.adapted``."""
    config = copy.deepcopy(config)
    config.dataset, reasons = choose_lengths(config.dataset, dataset, resolve_model_dir(config.encoder.model))
    train = config.train
    if train.steps:
        rows = len(TrainingSplit.of(dataset, config.dataset).train_rows)
        per_epoch = math.ceil(rows / train.batch_size)
        if train.max_steps_per_epoch:
            per_epoch = min(per_epoch, train.max_steps_per_epoch)
        epochs = max(1, math.ceil(train.steps / max(per_epoch, 1)))
        reasons["train.epochs"] = (f"{epochs}: the fewest epochs of {per_epoch} steps ({rows:,} training "
                                   f"points in batches of {train.batch_size}) that make train.steps "
                                   f"({train.steps})")
        train.epochs, train.steps = epochs, 0  # resolved: a resumed run keeps the epochs it started with
    config.adapted = {**config.adapted, **reasons}
    return config
