"""Read access to a prepared dataset (see :mod:`xmc.data.prepare` for the layout)."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import scipy.sparse as sp

from xmc.data.errors import DataError
from xmc.data.prepare import MANIFEST, SCHEMA_VERSION, read_manifest
from xmc.data.propensity import inverse_propensity
from xmc.data.tokens import TokenCache, ensure_token_cache, iter_texts


class PreparedDataset:
    """A prepared dataset directory: label matrices, filters, texts and token caches."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        manifest = read_manifest(self.directory)
        if manifest is None:
            raise DataError(self.directory / MANIFEST, None,
                            "missing or unreadable; expected a dataset prepared by jobs/prepare.py")
        if manifest.get("schema_version") != SCHEMA_VERSION:
            raise DataError(self.directory / MANIFEST, None,
                            f"schema version {manifest.get('schema_version')} but this code reads "
                            f"{SCHEMA_VERSION}; rerun jobs/prepare.py")
        self.manifest = manifest
        self.name: str = manifest["name"]
        self.num_labels: int = int(manifest["counts"]["labels"])

    def num_points(self, split: str) -> int:
        return int(self.manifest["counts"][split])

    @functools.lru_cache(maxsize=None)
    def label_matrix(self, split: str) -> sp.csr_matrix:
        """Binary ``points × labels`` CSR matrix of a split (relevance values are not used for ranking)."""
        column = pq.read_table(self.directory / f"{split}.parquet", columns=["label_ids"]).column("label_ids")
        column = column.combine_chunks()
        offsets = column.offsets.to_numpy().astype(np.int64)
        offsets = offsets - offsets[0]
        indices = column.values.to_numpy().astype(np.int32)
        data = np.ones(indices.size, dtype=np.float32)
        matrix = sp.csr_matrix((data, indices, offsets), shape=(len(offsets) - 1, self.num_labels))
        matrix.sort_indices()
        return matrix

    @functools.lru_cache(maxsize=None)
    def filter_matrix(self, split: str) -> sp.csr_matrix | None:
        """Reciprocal pairs to drop from this split's predictions, or None when the source had no file."""
        path = self.directory / f"filter_{split}.parquet"
        if not path.is_file():
            return None
        table = pq.read_table(path)
        rows = table.column("row").to_numpy()
        cols = table.column("label").to_numpy()
        return sp.csr_matrix((np.ones(rows.size, dtype=np.float32), (rows, cols)),
                             shape=(self.num_points(split), self.num_labels))

    def train_label_counts(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Training points per label, counted on ``rows`` of the train split (default: all of them)."""
        matrix = self.label_matrix("train")
        return np.bincount((matrix if rows is None else matrix[rows]).indices, minlength=self.num_labels)

    def inverse_propensity(self, a: float, b: float, rows: np.ndarray | None = None) -> np.ndarray:
        """Jain et al. inverse propensities from the train label frequencies, counted on ``rows`` of the
        train split (default: all; a validation hold-out leaves its points out)."""
        points = self.num_points("train") if rows is None else len(rows)
        return inverse_propensity(self.train_label_counts(rows), points, a, b)

    def texts(self, split: str, fields: str = "title") -> list[str]:
        """All texts of ``split`` ("train", "test" or "labels"); for small sets and serving exports."""
        return [t for chunk in iter_texts(self.directory / f"{split}.parquet", fields) for t in chunk]

    def uids(self, split: str) -> list[str]:
        return pq.read_table(self.directory / f"{split}.parquet", columns=["uid"]).column("uid").to_pylist()

    def token_cache(self, model_dir: Path, max_len: int, query_text: str, label_text: str,
                    progress: bool = True) -> TokenCache:
        return ensure_token_cache(self.directory, model_dir, max_len, query_text, label_text, progress)
