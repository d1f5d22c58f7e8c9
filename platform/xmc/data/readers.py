"""Streaming, validating readers for the two XMC file layouts.

1. The Extreme Classification Repository's raw-text "LF" layout: ``trn.json.gz``, ``tst.json.gz`` and
   ``lbl.json.gz``, gzip'd JSON lines with ``uid``, ``title``, ``content`` and, for points, ``target_ind``
   (0-based rows of ``lbl.json.gz``) and ``target_rel``.
2. The sparse layout of NGAME/DEXML processed data: ``trn_X_Y.txt`` / ``tst_X_Y.txt`` with a
   ``"rows labels"`` header and one line of space-separated ``label:value`` pairs per point, and the texts
   one per line in ``raw/trn_X.txt``, ``raw/tst_X.txt`` and ``raw/Y.txt``.

Both may come with ``filter_labels_test.txt`` / ``filter_labels_train.txt`` ("row label" reciprocal pairs).

Readers yield column chunks of at most ``chunk_rows`` rows, so memory does not grow with the file. Every
problem raises :class:`~xmc.data.errors.DataError` naming the file and the 1-based line: rows are never
skipped or repaired silently, since a dropped row shifts every later row id and corrupts the evaluation.
"""

from __future__ import annotations

import gzip
import json
import math
import zlib
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from xmc.data.errors import DataError

DEFAULT_CHUNK_ROWS = 8192  # rows per Parquet row group; bounds the Python objects alive at once

LF_FILES = {"train": "trn.json.gz", "test": "tst.json.gz", "labels": "lbl.json.gz"}
SPARSE_FILES = {"train": "trn_X_Y.txt", "test": "tst_X_Y.txt"}
SPARSE_TEXTS = {"train": "raw/trn_X.txt", "test": "raw/tst_X.txt", "labels": "raw/Y.txt"}
FILTER_FILES = {"train": "filter_labels_train.txt", "test": "filter_labels_test.txt"}


@dataclass
class PointChunk:
    """Columns of up to ``chunk_rows`` data points (queries)."""

    uid: list[str] = field(default_factory=list)
    title: list[str] = field(default_factory=list)
    content: list[str] = field(default_factory=list)
    label_ids: list[list[int]] = field(default_factory=list)
    label_rel: list[list[float]] = field(default_factory=list)
    #: 1-based lines in this chunk where a label was listed twice (merged into one entry)
    duplicate_lines: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.uid)

    def append(self, uid: str, title: str, content: str, ids: list[int], rel: list[float],
               lineno: int) -> None:
        if len(set(ids)) != len(ids):
            ids, rel = _merge_duplicates(ids, rel)
            self.duplicate_lines.append(lineno)
        self.uid.append(uid)
        self.title.append(title)
        self.content.append(content)
        self.label_ids.append(ids)
        self.label_rel.append(rel)


@dataclass
class LabelChunk:
    """Columns of up to ``chunk_rows`` labels."""

    uid: list[str] = field(default_factory=list)
    title: list[str] = field(default_factory=list)
    content: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.uid)


# ----------------------------------------------------------------------------------------------------------
# Line access


def iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield ``(1-based line number, line without newline)``; ``.gz`` files are decompressed on the fly.

    Decompression and decoding failures surface as a DataError at the line where they happened.
    """
    if not path.is_file():
        raise DataError(path, None, "file not found")
    opener = gzip.open if path.suffix == ".gz" else open
    lineno = 0
    try:
        with opener(path, "rt", encoding="utf-8", newline="\n") as handle:
            for lineno, line in enumerate(handle, start=1):
                yield lineno, line.rstrip("\n").rstrip("\r")
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise DataError(path, lineno + 1,
                        f"unreadable gzip data ({err}); expected a complete gzip file") from None
    except UnicodeDecodeError as err:
        raise DataError(path, lineno + 1,
                        f"not valid UTF-8 text ({err.reason} at byte {err.start})") from None


# ----------------------------------------------------------------------------------------------------------
# Field validation shared by both layouts


def _uid(value, path: Path, lineno: int) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError(path, lineno, f"field 'uid' must be a string or an integer, got {value!r}")
    return str(value)


EMPTY_TEXT_HINT = "(set dataset.allow_empty_text to keep such rows)"


def _text(obj: dict, key: str, path: Path, lineno: int, required: bool, allow_empty: bool = False) -> str:
    if key not in obj or obj[key] is None:
        if required:
            raise DataError(path, lineno, f"missing field '{key}'; expected a non-empty string")
        return ""
    value = obj[key]
    if not isinstance(value, str):
        raise DataError(path, lineno, f"field '{key}' must be a string, got {type(value).__name__}")
    if required and not allow_empty and not value.strip():
        raise DataError(path, lineno, f"empty '{key}'; expected a non-empty string {EMPTY_TEXT_HINT}")
    return value


def _label_index(value, num_labels: int, path: Path, lineno: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataError(path, lineno, f"{what} {value!r} is not an integer; expected a label index in "
                                      f"[0, {num_labels})")
    if value < 0:
        raise DataError(path, lineno, f"{what} {value} is negative; expected a label index in "
                                      f"[0, {num_labels})")
    if value >= num_labels:
        raise DataError(path, lineno, f"{what} {value} is out of range; expected a label index in "
                                      f"[0, {num_labels}) ({num_labels} labels in the label file)")
    return value


def _relevance(value, path: Path, lineno: int) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DataError(path, lineno, f"relevance {value!r} is not a finite number")
    return float(value)


def _merge_duplicates(ids: list[int], rel: list[float]) -> tuple[list[int], list[float]]:
    """One entry per label, in first-seen order, with the largest relevance given to it.

    Real files contain the odd repeated label (Reuters-21578 has one in each split); it means the same
    thing as listing it once, so it is merged (and counted in the manifest) rather than rejected.
    """
    merged: dict[int, float] = {}
    for label, value in zip(ids, rel):
        merged[label] = max(value, merged.get(label, value))
    return list(merged), list(merged.values())


# ----------------------------------------------------------------------------------------------------------
# LF raw-text layout


def _json_object(line: str, path: Path, lineno: int) -> dict:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        raise DataError(path, lineno, f"malformed JSON ({err.msg} at column {err.colno}); expected one JSON "
                                      "object per line") from None
    if not isinstance(obj, dict):
        raise DataError(path, lineno, f"expected a JSON object, got {type(obj).__name__}")
    return obj


def read_lf_labels(path: Path, chunk_rows: int = DEFAULT_CHUNK_ROWS, allow_empty_text: bool = False
                   ) -> Iterator[LabelChunk]:
    """Labels of ``lbl.json.gz``: line i (0-based) is label i."""
    chunk = LabelChunk()
    for lineno, line in iter_lines(path):
        if not line.strip():
            raise DataError(path, lineno,
                            "empty line; expected one JSON object per label (line i is label i)")
        obj = _json_object(line, path, lineno)
        if "uid" not in obj:
            raise DataError(path, lineno, "missing field 'uid'")
        chunk.uid.append(_uid(obj["uid"], path, lineno))
        chunk.title.append(_text(obj, "title", path, lineno, required=True, allow_empty=allow_empty_text))
        chunk.content.append(_text(obj, "content", path, lineno, required=False))
        if len(chunk) >= chunk_rows:
            yield chunk
            chunk = LabelChunk()
    if len(chunk):
        yield chunk


def read_lf_points(path: Path, num_labels: int, chunk_rows: int = DEFAULT_CHUNK_ROWS,
                   allow_empty_text: bool = False) -> Iterator[PointChunk]:
    """Data points of ``trn.json.gz`` / ``tst.json.gz``, with labels checked against ``num_labels``.

    An empty title is an error unless ``allow_empty_text`` (some real sets, e.g. Reuters-21578, contain
    documents with neither title nor body; they stay in the data as real test points).
    """
    chunk = PointChunk()
    for lineno, line in iter_lines(path):
        if not line.strip():
            raise DataError(path, lineno, "empty line; expected one JSON object per data point")
        obj = _json_object(line, path, lineno)
        if "uid" not in obj:
            raise DataError(path, lineno, "missing field 'uid'")
        uid = _uid(obj["uid"], path, lineno)
        title = _text(obj, "title", path, lineno, required=True, allow_empty=allow_empty_text)
        content = _text(obj, "content", path, lineno, required=False)
        if "target_ind" not in obj:
            raise DataError(path, lineno, "missing field 'target_ind'; expected a list of label indices")
        raw_ids = obj["target_ind"]
        if not isinstance(raw_ids, list):
            raise DataError(path, lineno,
                            f"field 'target_ind' must be a list of label indices, got {raw_ids!r}")
        ids = [_label_index(v, num_labels, path, lineno, "target_ind value") for v in raw_ids]
        raw_rel = obj.get("target_rel")
        if raw_rel is None:
            rel = [1.0] * len(ids)
        else:
            if not isinstance(raw_rel, list) or len(raw_rel) != len(ids):
                raise DataError(path, lineno, f"field 'target_rel' must be a list as long as 'target_ind' "
                                              f"({len(ids)}), got {raw_rel!r}")
            rel = [_relevance(v, path, lineno) for v in raw_rel]
        chunk.append(uid, title, content, ids, rel, lineno)
        if len(chunk) >= chunk_rows:
            yield chunk
            chunk = PointChunk()
    if len(chunk):
        yield chunk


# ----------------------------------------------------------------------------------------------------------
# Sparse (NGAME / DEXML) layout


def read_sparse_header(path: Path) -> tuple[int, int]:
    """The ``rows labels`` header of a ``*_X_Y.txt`` file."""
    for lineno, line in iter_lines(path):
        parts = line.split()
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise DataError(path, lineno, f"bad header {line!r}; expected 'num_rows num_labels' "
                                          "(two non-negative integers)")
        return int(parts[0]), int(parts[1])
    raise DataError(path, 1, "empty file; expected a 'num_rows num_labels' header")


def read_text_lines(path: Path, what: str, chunk_rows: int = DEFAULT_CHUNK_ROWS,
                    allow_empty_text: bool = False) -> Iterator[list[str]]:
    """Texts, one per line (the sparse layout's ``raw/*.txt``); empty ones only with ``allow_empty_text``."""
    chunk: list[str] = []
    for lineno, line in iter_lines(path):
        if not allow_empty_text and not line.strip():
            raise DataError(path, lineno, f"empty {what} text; expected one non-empty text per line "
                                          f"{EMPTY_TEXT_HINT}")
        chunk.append(line)
        if len(chunk) >= chunk_rows:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def read_sparse_labels(text_path: Path, chunk_rows: int = DEFAULT_CHUNK_ROWS, allow_empty_text: bool = False
                       ) -> Iterator[LabelChunk]:
    """Labels of ``raw/Y.txt``: uid = the 0-based line number."""
    row = 0
    for texts in read_text_lines(text_path, "label", chunk_rows, allow_empty_text):
        chunk = LabelChunk(uid=[str(row + i) for i in range(len(texts))], title=texts,
                           content=[""] * len(texts))
        row += len(texts)
        yield chunk


def _parse_sparse_row(line: str, num_labels: int, path: Path, lineno: int) -> tuple[list[int], list[float]]:
    ids: list[int] = []
    rel: list[float] = []
    for token in line.split():
        label, sep, value = token.partition(":")
        if not sep:
            raise DataError(path, lineno, f"bad pair {token!r}; expected 'label:value'")
        try:
            index = int(label)
        except ValueError:
            raise DataError(path, lineno, f"label {label!r} is not an integer; expected a label index in "
                                          f"[0, {num_labels})") from None
        ids.append(_label_index(index, num_labels, path, lineno, "label"))
        try:
            rel.append(_relevance(float(value), path, lineno))
        except ValueError:
            raise DataError(path, lineno, f"value {value!r} of label {index} is not a number") from None
    return ids, rel


def read_sparse_points(matrix_path: Path, text_path: Path, num_labels: int,
                       chunk_rows: int = DEFAULT_CHUNK_ROWS, allow_empty_text: bool = False
                       ) -> Iterator[PointChunk]:
    """Points of ``*_X_Y.txt`` zipped with their texts; header counts must agree with the file contents."""
    num_rows, header_labels = read_sparse_header(matrix_path)
    if header_labels != num_labels:
        raise DataError(matrix_path, 1, f"header says {header_labels} labels but the label file has "
                                        f"{num_labels}; expected the same count")
    texts = (t for chunk in read_text_lines(text_path, "point", chunk_rows, allow_empty_text) for t in chunk)
    chunk = PointChunk()
    row = 0
    for lineno, line in iter_lines(matrix_path):
        if lineno == 1:
            continue
        if row >= num_rows:
            raise DataError(matrix_path, lineno, f"more rows than the header's {num_rows}; expected exactly "
                                                 f"{num_rows} rows after the header")
        ids, rel = _parse_sparse_row(line, num_labels, matrix_path, lineno)
        text = next(texts, None)
        if text is None:
            raise DataError(text_path, row + 1, f"missing text: {matrix_path.name} has more rows than this "
                                                "file has lines; expected one text per row")
        chunk.append(str(row), text, "", ids, rel, lineno)
        row += 1
        if len(chunk) >= chunk_rows:
            yield chunk
            chunk = PointChunk()
    if row != num_rows:
        raise DataError(matrix_path, row + 2, f"file ends after {row} rows but the header says {num_rows}; "
                                              "expected as many rows as the header")
    if next(texts, None) is not None:
        raise DataError(text_path, row + 1, f"more lines than the {row} rows of {matrix_path.name}; "
                                            "expected one text per row")
    if len(chunk):
        yield chunk


# ----------------------------------------------------------------------------------------------------------
# Reciprocal-pair filters


def read_filter_pairs(path: Path, num_rows: int, num_labels: int) -> tuple[array, array]:
    """``row label`` pairs (0-based), both checked against the split's size and the label count.

    Returned as two compact int64 arrays (``np.frombuffer`` views them without a copy).
    """
    rows = array("q")
    labels = array("q")
    for lineno, line in iter_lines(path):
        if not line.strip():
            continue  # the repository ships empty filter files for sets without reciprocal pairs
        parts = line.split()
        if len(parts) != 2 or not all(p.lstrip("-").isdigit() for p in parts):
            raise DataError(path, lineno, f"bad filter pair {line!r}; expected 'row label' (two integers)")
        row, label = int(parts[0]), int(parts[1])
        if not 0 <= row < num_rows:
            raise DataError(path, lineno, f"row {row} is out of range; expected a row in [0, {num_rows})")
        if not 0 <= label < num_labels:
            raise DataError(path, lineno,
                            f"label {label} is out of range; expected a label in [0, {num_labels})")
        rows.append(row)
        labels.append(label)
    return rows, labels
