"""A finished (or checkpointed) training run, opened for inference: config, dataset and a checkpoint.

The run may be in remote storage (:mod:`xmc.storage`): its config is read from there, and the checkpoint
is copied once into this node's cache, since the weights are loaded from local files.
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from xmc import checkpoint as ckpt
from xmc import storage
from xmc.config import ConfigError, load_config
from xmc.data.dataset import PreparedDataset
from xmc.data.lengths import choose_lengths, token_cache
from xmc.data.split import TrainingSplit
from xmc.data.tokens import TokenCache
from xmc.experiment import ExperimentConfig
from xmc.models.encoder import resolve_model_dir
from xmc.scoring.model import ScoringModel

RUN_CONFIG = "config.yaml"


@dataclass
class TrainedRun:
    """A run of ``jobs/train.py`` (``location``: a path or a storage URI), its resolved config and one of
    its checkpoints (``checkpoint_name``; its files on this machine at ``checkpoint``)."""

    location: str
    checkpoint_name: str
    checkpoint: Path
    config: ExperimentConfig

    @classmethod
    def open(cls, location: str | os.PathLike, checkpoint: str = "") -> TrainedRun:
        """The run at ``location`` at checkpoint ``checkpoint`` (a directory name; "" = the latest)."""
        location = storage.resolve(location)
        if not storage.is_dir(location):
            raise ConfigError(f"--run: {location} is not a directory")
        config_location = storage.join(location, RUN_CONFIG)
        if not storage.is_file(config_location):
            raise ConfigError(f"--run: {config_location} missing; expected a run directory of jobs/train.py")
        config = load_config(ExperimentConfig, base=yaml.safe_load(storage.read_text(config_location)))
        name = ckpt.find_checkpoint(location, checkpoint)
        run = cls(location, name, _local_checkpoint(location, name), config)
        # lengths a run left to the data (its config.yaml written without the driver): as it chose them
        model_dir = resolve_model_dir(config.encoder.model)
        config.dataset, _ = choose_lengths(config.dataset, run.dataset, model_dir)
        return run

    @property
    def name(self) -> str:
        return storage.name(self.location)

    @functools.cached_property
    def dataset(self) -> PreparedDataset:
        return PreparedDataset(self.config.dataset.prepared)

    @functools.cached_property
    def split(self) -> TrainingSplit:
        return TrainingSplit.of(self.dataset, self.config.dataset)

    def token_cache(self, progress: bool = False) -> TokenCache:
        return token_cache(self.dataset, self.config.dataset, resolve_model_dir(self.config.encoder.model),
                           progress=progress)

    def scoring_model(self, device: torch.device | str | None = None,
                      subset: np.ndarray | None = None) -> ScoringModel:
        """The checkpoint's model in this process (one worker), on the GPU when there is one; with
        ``subset`` (label ids) the label state of those labels only (:meth:`ScoringModel.build`)."""
        # a checkpoint records its cold-start labels; for one of an older layout, the run's config and
        # dataset define them
        recorded = ckpt.has_state(self.checkpoint, ckpt.LABELS)
        cache = self.token_cache()
        # a subset model holds a copy of its labels' rows, read so that the other labels' never stay resident
        tokens = cache.arrays("labels") if subset is None else cache.take("labels", subset)
        return ScoringModel.from_checkpoint(
            self.checkpoint, self.config, self.dataset.num_labels, label_tokens=tokens,
            cold_start=None if recorded else self.split.cold_start_labels(self.dataset), device=device,
            subset=subset)


def _local_checkpoint(location: str, name: str) -> Path:
    """The checkpoint's directory on this machine: the run's own when it is local, else a cached copy keyed
    by where it is and when it was written (a checkpoint directory is written once)."""
    where = storage.join(location, name)
    if storage.is_local(where):
        return storage.local_path(where)
    filesystem, path = storage.filesystem(storage.join(where, f"{ckpt.MODEL}.json"))
    written = filesystem.get_file_info(path).mtime_ns
    key = hashlib.sha256(f"{where}|{written}".encode()).hexdigest()[:16]
    return storage.materialize(where, f"checkpoints/{key}-{name}")
