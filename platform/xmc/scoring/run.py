"""A finished (or checkpointed) training run, opened for inference: config, dataset and a checkpoint."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from xmc import checkpoint as ckpt
from xmc.config import ConfigError, load_config, resolve_path
from xmc.data.dataset import PreparedDataset
from xmc.data.split import TrainingSplit
from xmc.data.tokens import TokenCache
from xmc.experiment import ExperimentConfig
from xmc.models.encoder import resolve_model_dir
from xmc.scoring.model import ScoringModel

RUN_CONFIG = "config.yaml"


@dataclass
class TrainedRun:
    """A run directory of ``jobs/train.py``: its resolved config and one of its checkpoints."""

    directory: Path
    checkpoint: Path
    config: ExperimentConfig

    @classmethod
    def open(cls, run_dir: str | os.PathLike, checkpoint: str = "") -> TrainedRun:
        """The run in ``run_dir`` at checkpoint ``checkpoint`` (a directory name; "" = the latest)."""
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise ConfigError(f"--run: {run_dir} is not a directory")
        config_path = run_dir / RUN_CONFIG
        if not config_path.is_file():
            raise ConfigError(f"--run: {config_path} missing; expected a run directory of jobs/train.py")
        return cls(run_dir, ckpt.find_checkpoint(run_dir, checkpoint),
                   load_config(ExperimentConfig, config_path))

    @functools.cached_property
    def dataset(self) -> PreparedDataset:
        return PreparedDataset(resolve_path(self.config.dataset.prepared))

    @functools.cached_property
    def split(self) -> TrainingSplit:
        return TrainingSplit.of(self.dataset, self.config.dataset)

    def token_cache(self, progress: bool = False) -> TokenCache:
        data = self.config.dataset
        return self.dataset.token_cache(resolve_model_dir(self.config.encoder.model), data.max_len,
                                        data.query_text, data.label_text, progress=progress)

    def scoring_model(self, device: torch.device | str | None = None) -> ScoringModel:
        """The checkpoint's model in this process (one worker), on the GPU when there is one."""
        # a checkpoint records its cold-start labels; for one of an older layout, the run's config and
        # dataset define them
        recorded = ckpt.has_state(self.checkpoint, ckpt.LABELS)
        return ScoringModel.from_checkpoint(
            self.checkpoint, self.config, self.dataset.num_labels,
            label_tokens=self.token_cache().arrays("labels"),
            cold_start=None if recorded else self.split.cold_start_labels(self.dataset), device=device)
