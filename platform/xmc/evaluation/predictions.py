"""PRED.npz: a top-k prediction file (``indices`` int64 n × k with −1 = none, ``scores`` float32 n × k)."""

from __future__ import annotations

import io
import os
import zipfile

import numpy as np

from xmc import storage
from xmc.data.errors import DataError


def save_predictions(location: str | os.PathLike, indices: np.ndarray, scores: np.ndarray) -> None:
    """Write a prediction file to a path or a storage URI (whole, or not at all)."""
    buffer = io.BytesIO()
    np.savez(buffer, indices=np.asarray(indices, dtype=np.int64), scores=np.asarray(scores, dtype=np.float32))
    storage.write_bytes(storage.resolve(location), buffer.getvalue())


def load_predictions(path: str | os.PathLike, num_rows: int,
                     num_labels: int) -> tuple[np.ndarray, np.ndarray]:
    """Load and check a prediction file (a path or a storage URI) against the test split's size and the
    label count."""
    path = storage.resolve(path)
    if not storage.is_file(path):
        raise DataError(path, None, "file not found; expected a .npz with 'indices' and 'scores'")
    try:
        with np.load(io.BytesIO(storage.read_bytes(path)), allow_pickle=False) as npz:
            missing = {"indices", "scores"} - set(npz.files)
            if missing:
                raise DataError(path, None, f"missing array(s) {', '.join(sorted(missing))}; "
                                            "expected 'indices' (int64, n × k) and 'scores' (float32, n × k)")
            indices, scores = npz["indices"], npz["scores"]
    except (zipfile.BadZipFile, ValueError, OSError) as err:
        raise DataError(path, None, f"unreadable .npz ({err})") from None
    if indices.ndim != 2 or scores.shape != indices.shape:
        raise DataError(path, None, f"'indices' {indices.shape} and 'scores' {scores.shape} "
                                    "must be 2-D arrays of the same shape")
    if indices.shape[0] != num_rows:
        raise DataError(path, None, f"{indices.shape[0]} rows but the test split has {num_rows}; "
                                    "expected one row per test point")
    if not np.issubdtype(indices.dtype, np.integer):
        raise DataError(path, None, f"'indices' has dtype {indices.dtype}; expected integers (int64)")
    if not np.issubdtype(scores.dtype, np.floating):
        raise DataError(path, None, f"'scores' has dtype {scores.dtype}; expected floats (float32)")
    bad = (indices < -1) | (indices >= num_labels)
    if bad.any():
        row, col = map(int, np.argwhere(bad)[0])
        raise DataError(path, None, f"indices[{row}, {col}] = {int(indices[row, col])} is not a label id; "
                                    f"expected -1 or a value in [0, {num_labels})")
    if np.isnan(scores).any():
        row, col = map(int, np.argwhere(np.isnan(scores))[0])
        raise DataError(path, None, f"scores[{row}, {col}] is NaN; expected finite scores")
    return indices.astype(np.int64, copy=False), scores.astype(np.float32, copy=False)
