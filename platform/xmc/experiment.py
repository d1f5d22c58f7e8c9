"""The full configuration of an experiment: one typed tree shared by every job.

``configs/*.yaml`` files fill it (datasets and methods are separate files pulled in with ``include:``);
each job reads the sections it needs, so one file drives prepare, train, evaluate and export alike.

Like every ``config`` module, this one holds plain dataclasses and imports only other config modules, so
any layer may read a run's configuration without importing the code of the layers it configures.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from xmc.data.config import DatasetConfig
from xmc.evaluation.config import EvalConfig
from xmc.losses.config import LossConfig
from xmc.mining.config import MiningConfig
from xmc.models.config import EncoderConfig, HeadsConfig
from xmc.training.config import PoolConfig, RunSection, TrainConfig


@dataclass(kw_only=True)
class ExperimentConfig:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    model: HeadsConfig = field(default_factory=HeadsConfig)
    pool: PoolConfig = field(default_factory=PoolConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    mining: MiningConfig = field(default_factory=MiningConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunSection = field(default_factory=RunSection)
    #: settings chosen from the data (a dotted key -> its value and why; :mod:`xmc.training.adapt`)
    adapted: dict[str, str] = field(default_factory=dict)

    def validate(self) -> None:
        if self.pool.all_labels and (self.model.classifier or self.model.prototypes):
            raise ValueError("pool.all_labels trains the dual encoder alone (DEXML): "
                             "set model.classifier and model.prototypes to false")
        if self.eval.split == "validation" and self.dataset.validation_fraction <= 0:
            raise ValueError("eval.split is 'validation' but dataset.validation_fraction is 0")
        if self.model.prototypes and self.model.de_dim and self.model.de_dim % self.model.lpn_heads:
            raise ValueError(f"model.de_dim ({self.model.de_dim}) must be divisible by model.lpn_heads")
