"""Per-dataset settings: where the data live, how texts are built and truncated, propensity constants."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


TextFields = Literal["title", "title+content"]

#: Propensity constants A, B of datasets outside the Amazon and Wikipedia families (Jain et al., 2016).
DEFAULT_A = 0.55
DEFAULT_B = 1.5


@dataclass(kw_only=True)
class DatasetConfig:
    """One XMC dataset.

    Args:
        name: short name used in run names and reports.
        source: directory of the raw files (LF json.gz or sparse layout), read by ``jobs/prepare.py``.
        prepared: directory of the prepared dataset (Parquet + manifest + token caches).
        max_len: tokens per text after truncation (queries and labels).
        query_text: ``title`` or ``title+content`` (content appended when non-empty; "Titles" sets use title).
        label_text: the same choice for label texts (LF label text is usually the title).
        propensity_a, propensity_b: Jain et al. constants (Amazon 0.6/2.6, Wikipedia 0.5/0.4, else 0.55/1.5).
        allow_empty_text: keep points/labels whose title (sparse layout: text line) is empty instead of
            rejecting the file; they are counted in the manifest.
        validation_fraction: hold out this fraction of the training points (fixed ``validation_seed``) as a
            validation split; training then never sees them (used for honest model selection by Tune).
        validation_seed: seed of the hold-out draw.
    """

    name: str = ""
    source: str = ""
    prepared: str = ""
    max_len: int = 32
    query_text: TextFields = "title+content"
    label_text: TextFields = "title"
    propensity_a: float = DEFAULT_A
    propensity_b: float = DEFAULT_B
    allow_empty_text: bool = False
    validation_fraction: float = 0.0
    validation_seed: int = 0

    def validate(self) -> None:
        if self.max_len < 2:
            raise ValueError(f"dataset.max_len must be >= 2, got {self.max_len}")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(f"dataset.validation_fraction must be in [0, 1), got {self.validation_fraction}")
