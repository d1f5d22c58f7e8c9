"""How many tokens of a text are encoded: chosen from the data unless the dataset config says.

Padding costs nothing (each batch is cut to its longest text), so the cut matters only for the long texts it
truncates: a cap too low loses what they say, one too high spends every step's time on a few long
documents. Without a configured ``max_len`` the cut is the 95th percentile of the training queries' token
counts, and for labels the 99th percentile of theirs (a label enters many steps, and label texts are
short), each at most ``max_len_cap``. Both are counted on a fixed sample of the texts with the run's
tokenizer, so every worker and every rerun chooses the same.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from xmc.data.config import DatasetConfig
from xmc.data.dataset import PreparedDataset
from xmc.data.tokens import TokenCache, load_tokenizer, token_lengths

QUERY_PERCENTILE = 95
LABEL_PERCENTILE = 99
SAMPLE = 20_000


def choose_lengths(config: DatasetConfig, dataset: PreparedDataset, model_dir: Path
                   ) -> tuple[DatasetConfig, dict[str, str]]:
    """``config`` with ``max_len`` and ``label_max_len`` set where they are 0, and why (key -> reason)."""
    if config.max_len and config.label_max_len:
        return config, {}
    if config.max_len and not config.label_max_len:
        return dataclasses.replace(config, label_max_len=config.max_len), {}
    tokenizer = load_tokenizer(model_dir)
    chosen, reasons = {}, {}
    for key, split, fields, percentile in (("max_len", "train", config.query_text, QUERY_PERCENTILE),
                                           ("label_max_len", "labels", config.label_text, LABEL_PERCENTILE)):
        if getattr(config, key):
            continue
        texts = dataset.sample_texts(split, fields, SAMPLE)
        counts = token_lengths(tokenizer, texts, config.max_len_cap) if texts else np.array([2])
        chosen[key] = int(min(max(np.ceil(np.percentile(counts, percentile)), 2), config.max_len_cap))
        total = dataset.num_points(split) if split == "train" else dataset.num_labels
        what = "training queries" if split == "train" else "labels"
        reasons[f"dataset.{key}"] = (f"{chosen[key]}: the {percentile}th percentile of the token counts of "
                                     f"{len(texts):,} of the {total:,} {what}, at most dataset.max_len_cap "
                                     f"({config.max_len_cap})")
    return dataclasses.replace(config, **chosen), reasons


def token_cache(dataset: PreparedDataset, config: DatasetConfig, model_dir: Path,
                progress: bool = False) -> TokenCache:
    """The dataset's token cache for ``config``'s text fields and lengths (chosen from the data where the
    config leaves them 0), built on first use."""
    config, _ = choose_lengths(config, dataset, model_dir)
    return dataset.token_cache(model_dir, config.max_len, config.query_text, config.label_text,
                               progress=progress, label_max_len=config.label_max_len)
