"""Turn raw XMC files into a prepared dataset directory.

Layout written (everything into a temporary directory that is renamed onto ``out`` at the end, or uploaded
to it, manifest last, when ``out`` is a storage URI)::

    out/manifest.json          counts, label statistics, source file hashes, schema version, options
    out/labels.parquet         uid, title, content
    out/train.parquet          uid, title, content, label_ids list<int32>, label_rel list<float32>
    out/test.parquet           same columns
    out/filter_test.parquet    row, label (only when the source has filter_labels_test.txt)
    out/filter_train.parquet   row, label (only when the source has filter_labels_train.txt)
    out/tokens/<key>/          token caches, added later per (tokenizer, max_len, text fields), when
                               ``out`` is local (see :mod:`xmc.data.tokens`)

Input is streamed chunk by chunk into Parquet row groups, so peak memory is bounded by the chunk size and
the per-label counters, not by the input size. Rerunning on unchanged input (same file hashes, same schema
version) leaves the directory untouched.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from xmc import storage
from xmc.data.errors import DataError
from xmc.data.readers import (
    DEFAULT_CHUNK_ROWS,
    FILTER_FILES,
    LF_FILES,
    SPARSE_FILES,
    SPARSE_TEXTS,
    read_filter_pairs,
    read_lf_labels,
    read_lf_points,
    read_sparse_labels,
    read_sparse_points,
)
from xmc.io import atomic_dir, sha256_file, write_json

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"

POINT_SCHEMA = pa.schema([
    ("uid", pa.string()),
    ("title", pa.string()),
    ("content", pa.string()),
    ("label_ids", pa.list_(pa.int32())),
    ("label_rel", pa.list_(pa.float32())),
])
LABEL_SCHEMA = pa.schema([("uid", pa.string()), ("title", pa.string()), ("content", pa.string())])
FILTER_SCHEMA = pa.schema([("row", pa.int64()), ("label", pa.int32())])


@dataclass
class SourceLayout:
    """Which files make up a source directory."""

    kind: str  # "lf-json" or "xc-sparse"
    labels: Path
    points: dict[str, Path]
    texts: dict[str, Path]
    filters: dict[str, Path]

    def all_files(self) -> list[Path]:
        files = [self.labels, *self.points.values(), *self.texts.values(), *self.filters.values()]
        return sorted(set(files))


def detect_layout(source: Path) -> SourceLayout:
    """Recognise the LF raw-text or the sparse layout; a missing file is named with what was expected."""
    if not source.is_dir():
        raise DataError(source, None, "source directory not found")
    filters = {split: source / name for split, name in FILTER_FILES.items() if (source / name).is_file()}
    if (source / LF_FILES["train"]).is_file() or (source / LF_FILES["test"]).is_file():
        for name in LF_FILES.values():
            if not (source / name).is_file():
                raise DataError(source / name, None, "file not found; the LF raw-text layout needs "
                                                     f"{', '.join(LF_FILES.values())}")
        return SourceLayout("lf-json", source / LF_FILES["labels"],
                            {s: source / LF_FILES[s] for s in ("train", "test")}, {}, filters)
    if (source / SPARSE_FILES["train"]).is_file() or (source / SPARSE_FILES["test"]).is_file():
        needed = [*SPARSE_FILES.values(), *SPARSE_TEXTS.values()]
        for name in needed:
            if not (source / name).is_file():
                raise DataError(source / name, None,
                                f"file not found; the sparse layout needs {', '.join(needed)}")
        return SourceLayout("xc-sparse", source / SPARSE_TEXTS["labels"],
                            {s: source / SPARSE_FILES[s] for s in ("train", "test")},
                            {s: source / SPARSE_TEXTS[s] for s in ("train", "test")}, filters)
    raise DataError(source, None, f"no XMC data found; expected {', '.join(LF_FILES.values())} (LF raw-text "
                                  f"layout) or {', '.join(SPARSE_FILES.values())} with raw/*.txt "
                                  "(sparse layout)")


def source_fingerprint(layout: SourceLayout) -> dict[str, dict]:
    """sha256 and size of every source file, keyed by its path relative to the source directory."""
    root = layout.labels.parent if layout.kind == "lf-json" else layout.labels.parent.parent
    return {str(p.relative_to(root)): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
            for p in layout.all_files()}


def _split_stats(rows: int, label_counts: np.ndarray, labels_per_point_max: int, empty: int,
                 empty_titles: int, duplicate_lines: list[int]) -> dict:
    pairs = int(label_counts.sum())
    return {
        "points": rows,
        "empty_titles": empty_titles,
        "duplicate_labels_merged_at_lines": duplicate_lines[:100],
        "duplicate_labels_merged": len(duplicate_lines),
        "pairs": pairs,
        "labels_per_point": round(pairs / rows, 4) if rows else 0.0,
        "max_labels_per_point": labels_per_point_max,
        "points_without_labels": empty,
        "points_per_label": round(pairs / label_counts.size, 4) if label_counts.size else 0.0,
        "max_points_per_label": int(label_counts.max()) if label_counts.size else 0,
        "labels_without_points": int((label_counts == 0).sum()),
    }


def _write_labels(layout: SourceLayout, path: Path, chunk_rows: int, allow_empty_text: bool) -> int:
    reader = (read_lf_labels(layout.labels, chunk_rows, allow_empty_text) if layout.kind == "lf-json"
              else read_sparse_labels(layout.labels, chunk_rows, allow_empty_text))
    count = 0
    with pq.ParquetWriter(path, LABEL_SCHEMA) as writer:
        for chunk in reader:
            writer.write_table(pa.table({"uid": chunk.uid, "title": chunk.title, "content": chunk.content},
                                        schema=LABEL_SCHEMA))
            count += len(chunk)
    if count == 0:
        raise DataError(layout.labels, 1, "no labels; expected one label per line")
    return count


def _write_points(layout: SourceLayout, split: str, num_labels: int, path: Path, chunk_rows: int,
                  allow_empty_text: bool) -> dict:
    if layout.kind == "lf-json":
        reader = read_lf_points(layout.points[split], num_labels, chunk_rows, allow_empty_text)
    else:
        reader = read_sparse_points(layout.points[split], layout.texts[split], num_labels, chunk_rows,
                                    allow_empty_text)
    label_counts = np.zeros(num_labels, dtype=np.int64)
    rows = empty = max_per_point = empty_titles = 0
    duplicate_lines: list[int] = []
    with pq.ParquetWriter(path, POINT_SCHEMA) as writer:
        for chunk in reader:
            writer.write_table(pa.table({
                "uid": chunk.uid, "title": chunk.title, "content": chunk.content,
                "label_ids": chunk.label_ids, "label_rel": chunk.label_rel,
            }, schema=POINT_SCHEMA))
            flat = np.fromiter((i for ids in chunk.label_ids for i in ids), dtype=np.int64)
            label_counts += np.bincount(flat, minlength=num_labels)
            sizes = [len(ids) for ids in chunk.label_ids]
            rows += len(chunk)
            empty += sizes.count(0)
            empty_titles += sum(1 for title in chunk.title if not title.strip())
            duplicate_lines.extend(chunk.duplicate_lines)
            max_per_point = max(max_per_point, max(sizes))
    if rows == 0:
        raise DataError(layout.points[split], 1, "no data points; expected at least one line")
    return _split_stats(rows, label_counts, max_per_point, empty, empty_titles, duplicate_lines)


def _write_filter(path_in: Path, num_rows: int, num_labels: int, path_out: Path) -> int:
    rows, labels = read_filter_pairs(path_in, num_rows, num_labels)
    table = pa.table({"row": np.frombuffer(rows, dtype=np.int64),
                      "label": np.frombuffer(labels, dtype=np.int64).astype(np.int32)}, schema=FILTER_SCHEMA)
    pq.write_table(table, path_out)
    return table.num_rows


def read_manifest(location: str | os.PathLike) -> dict | None:
    """The manifest of a prepared dataset at ``location`` (a path or a storage URI), or None."""
    path = storage.join(storage.resolve(location), MANIFEST)
    if not storage.is_file(path):
        return None
    try:
        return json.loads(storage.read_text(path))
    except json.JSONDecodeError:
        return None


def _is_current(location: str, fingerprint: dict, options: dict) -> bool:
    manifest = read_manifest(location)
    if manifest is None or manifest.get("schema_version") != SCHEMA_VERSION:
        return False
    if manifest.get("source", {}).get("files") != fingerprint or manifest.get("options") != options:
        return False
    fs, root = storage.filesystem(location)
    names = list(manifest.get("files", {}))
    infos = fs.get_file_info([f"{root.rstrip('/')}/{name}" for name in names])
    return all(info.size == manifest["files"][name]["bytes"] for name, info in zip(names, infos))


def prepare_dataset(source: str | os.PathLike, out: str | os.PathLike, allow_empty_text: bool = False,
                    chunk_rows: int = DEFAULT_CHUNK_ROWS) -> tuple[dict, bool]:
    """Prepare ``source`` into ``out``. Returns ``(manifest, changed)``; ``changed`` is False for a no-op.

    Either may be a path or a storage URI (:mod:`xmc.storage`): a remote source is read from a temporary
    copy, and a dataset for remote storage is written locally and uploaded, manifest last.
    ``allow_empty_text`` keeps rows whose title is empty (counted in the manifest) instead of failing.
    """
    source, out = storage.resolve(source), storage.resolve(out)
    if not storage.is_local(source):
        if not storage.is_dir(source):
            raise DataError(source, None, "source directory not found")
        with tempfile.TemporaryDirectory(prefix="xmc-source-") as tmp:
            copy = storage.download_dir(source, Path(tmp) / storage.name(source))
            return _prepare(copy, source, out, allow_empty_text, chunk_rows)
    return _prepare(storage.local_path(source), source, out, allow_empty_text, chunk_rows)


def _prepare(source: Path, source_location: str, out: str, allow_empty_text: bool, chunk_rows: int
             ) -> tuple[dict, bool]:
    layout = detect_layout(source)
    fingerprint = source_fingerprint(layout)
    options = {"allow_empty_text": allow_empty_text}
    if _is_current(out, fingerprint, options):
        return read_manifest(out), False
    if storage.is_file(out) or (storage.list_dir(out) and read_manifest(out) is None):
        raise DataError(out, None, "exists and is not a prepared dataset; refusing to overwrite it "
                                   "(choose an empty or new --out directory)")
    if storage.is_local(out):
        with atomic_dir(storage.local_path(out)) as tmp:
            manifest = _write_dataset(layout, source_location, fingerprint, options, tmp, chunk_rows)
        return manifest, True
    with tempfile.TemporaryDirectory(prefix="xmc-prepared-") as tmp:
        manifest = _write_dataset(layout, source_location, fingerprint, options, Path(tmp), chunk_rows)
        storage.upload_dir(tmp, out)
    return manifest, True


def _write_dataset(layout: SourceLayout, source_location: str, fingerprint: dict, options: dict, out: Path,
                   chunk_rows: int) -> dict:
    allow_empty_text = options["allow_empty_text"]
    num_labels = _write_labels(layout, out / "labels.parquet", chunk_rows, allow_empty_text)
    splits = {split: _write_points(layout, split, num_labels, out / f"{split}.parquet", chunk_rows,
                                   allow_empty_text)
              for split in ("train", "test")}
    filters = {}
    for split, path in layout.filters.items():
        filters[split] = _write_filter(path, splits[split]["points"], num_labels,
                                       out / f"filter_{split}.parquet")
    files = {p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
             for p in sorted(out.iterdir()) if p.is_file()}
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "name": storage.name(source_location),
        "format": layout.kind,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "counts": {"train": splits["train"]["points"], "test": splits["test"]["points"],
                   "labels": num_labels, **{f"filter_{s}": n for s, n in filters.items()}},
        "splits": splits,
        "options": options,
        "source": {"dir": source_location, "files": fingerprint},
        "files": files,
    }
    write_json(out / MANIFEST, manifest)
    return manifest
