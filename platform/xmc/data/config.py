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
        max_len: tokens per query after truncation; 0 = chosen from the data (the 95th percentile of a
            sample of the training queries' token counts, at most ``max_len_cap``), recorded with the reason
            in the run's config.yaml (``adapted``).
        label_max_len: the same for label texts; 0 = ``max_len`` when that is set, else chosen from the data
            (the 99th percentile: a label is encoded in every step it enters, so fewer are cut).
        max_len_cap: the most tokens a length chosen from the data may be (bounds every step's cost).
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
    max_len: int = 0
    label_max_len: int = 0
    max_len_cap: int = 128
    query_text: TextFields = "title+content"
    label_text: TextFields = "title"
    propensity_a: float = DEFAULT_A
    propensity_b: float = DEFAULT_B
    allow_empty_text: bool = False
    validation_fraction: float = 0.0
    validation_seed: int = 0

    def validate(self) -> None:
        for key in ("max_len", "label_max_len"):
            if getattr(self, key) == 1 or getattr(self, key) < 0:
                raise ValueError(f"dataset.{key} must be 0 (chosen from the data) or >= 2, got "
                                 f"{getattr(self, key)}")
        if self.max_len_cap < 2:
            raise ValueError(f"dataset.max_len_cap must be >= 2, got {self.max_len_cap}")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(f"dataset.validation_fraction must be in [0, 1), got {self.validation_fraction}")
