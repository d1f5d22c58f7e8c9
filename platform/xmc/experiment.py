"""The full configuration of an experiment: one typed tree shared by every job.

``configs/*.yaml`` files fill it (datasets and methods are separate files pulled in with ``include:``);
each job reads the sections it needs, so one file drives prepare, train, evaluate and export alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from xmc.data.config import DatasetConfig
from xmc.evaluation.config import EvalConfig
from xmc.models.config import EncoderConfig


@dataclass(kw_only=True)
class ExperimentConfig:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
