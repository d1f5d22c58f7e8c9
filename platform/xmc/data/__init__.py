"""Data: readers for the LF raw-text and sparse layouts, the prepared dataset, token caches."""

from xmc.data.config import DatasetConfig
from xmc.data.dataset import PreparedDataset
from xmc.data.errors import DataError
from xmc.data.prepare import prepare_dataset

__all__ = ["DataError", "DatasetConfig", "PreparedDataset", "prepare_dataset"]
