"""Read access to a prepared dataset (see :mod:`xmc.data.prepare` for the layout), on this machine's file
system or in remote storage (:mod:`xmc.storage`): Parquet is read through pyarrow's file systems, and the
token caches, which are memory-mapped, are built next to the data when it is local and in this node's cache
when it is not."""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import scipy.sparse as sp

from xmc import storage
from xmc.data.errors import DataError
from xmc.data.prepare import MANIFEST, SCHEMA_VERSION, read_manifest
from xmc.data.propensity import inverse_propensity
from xmc.data.tokens import TokenCache, ensure_token_cache, iter_texts


class PreparedDataset:
    """A prepared dataset: label matrices, filters, texts and token caches."""

    def __init__(self, location: str | os.PathLike):
        self.location = storage.resolve(location)
        self.fs, self.root = storage.filesystem(self.location)
        manifest = read_manifest(self.location)
        if manifest is None:
            raise DataError(storage.join(self.location, MANIFEST), None,
                            "missing or unreadable; expected a dataset prepared by jobs/prepare.py")
        if manifest.get("schema_version") != SCHEMA_VERSION:
            raise DataError(storage.join(self.location, MANIFEST), None,
                            f"schema version {manifest.get('schema_version')} but this code reads "
                            f"{SCHEMA_VERSION}; rerun jobs/prepare.py")
        self.manifest = manifest
        self.name: str = manifest["name"]
        self.num_labels: int = int(manifest["counts"]["labels"])

    @property
    def directory(self) -> Path:
        """The dataset's directory, when it is on this machine's file system."""
        return storage.local_path(self.location)

    def num_points(self, split: str) -> int:
        return int(self.manifest["counts"][split])

    def _path(self, name: str) -> str:
        return f"{self.root.rstrip('/')}/{name}"

    def parquet(self, split: str) -> pq.ParquetFile:
        """A split's Parquet file ("train", "test" or "labels"), opened for streaming reads."""
        return pq.ParquetFile(self.fs.open_input_file(self._path(f"{split}.parquet")))

    def _table(self, name: str, columns: list[str] | None = None):
        return pq.read_table(self._path(name), columns=columns, filesystem=self.fs)

    @functools.lru_cache(maxsize=None)
    def label_matrix(self, split: str) -> sp.csr_matrix:
        """Binary ``points × labels`` CSR matrix of a split (relevance values are not used for ranking)."""
        column = self._table(f"{split}.parquet", ["label_ids"]).column("label_ids").combine_chunks()
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
        name = f"filter_{split}.parquet"
        if name not in self.manifest.get("files", {}):
            return None
        table = self._table(name)
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
        return [t for chunk in iter_texts(self.parquet(split), fields) for t in chunk]

    def uids(self, split: str) -> list[str]:
        return self._table(f"{split}.parquet", ["uid"]).column("uid").to_pylist()

    def token_cache_dir(self) -> Path:
        """Where this dataset's token caches live on this node (see :mod:`xmc.data.tokens`)."""
        if storage.is_local(self.location):
            return self.directory / "tokens"
        content = hashlib.sha256(json.dumps(self.manifest["files"], sort_keys=True).encode()).hexdigest()[:12]
        return storage.cache_root() / "tokens" / f"{self.name}-{content}"

    def sample_texts(self, split: str, fields: str, count: int, seed: int = 0) -> list[str]:
        """The texts of ``count`` rows of ``split`` drawn without replacement with ``seed`` (all of them when
        the split has fewer), in row order."""
        from xmc.data.tokens import join_text

        rows = self.num_labels if split == "labels" else self.num_points(split)
        chosen = np.arange(rows) if rows <= count else np.sort(
            np.random.default_rng(seed).choice(rows, count, replace=False))
        columns = ["title", "content"] if fields == "title+content" else ["title"]
        table = self._table(f"{split}.parquet", columns).take(chosen)
        titles = table.column("title").to_pylist()
        contents = table.column("content").to_pylist() if "content" in columns else [""] * len(titles)
        return [join_text(title, content, fields) for title, content in zip(titles, contents)]

    def token_cache(self, model_dir: Path, max_len: int, query_text: str, label_text: str,
                    progress: bool = True, label_max_len: int = 0) -> TokenCache:
        return ensure_token_cache(self.parquet, self.token_cache_dir(), model_dir, max_len, query_text,
                                  label_text, progress, label_max_len)
