"""Token caches: every text of a prepared dataset tokenised once per (tokenizer, max_len, text fields).

Stored as ``.npy`` files opened as memory maps, so training workers share pages through the OS instead of
each holding Python lists of millions of strings::

    <cache dir>/<key>/meta.json
    <cache dir>/<key>/{train,test,labels}.ids.npy   int32 [n, max_len], padded with the pad id
    <cache dir>/<key>/{train,test,labels}.len.npy   int32 [n], tokens before padding

The cache directory is ``<dataset>/tokens`` for a dataset on this machine's file system, and a directory of
this node's cache (:func:`xmc.storage.cache_root`) for one in remote storage, keyed by the dataset's content.
Several workers of a node may ask for the same cache at once: a file lock makes one build it while the
others wait.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from xmc.io import atomic_dir, write_json
from xmc.storage import file_lock

if TYPE_CHECKING:
    import torch

SPLITS = ("train", "test", "labels")
_BATCH = 4096
#: Bytes of token ids read at once by :meth:`TokenCache.take`.
TAKE_WINDOW_BYTES = 4 << 20


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                    "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model")


def tokenizer_id(model_dir: Path) -> str:
    """Short stable id of a tokenizer: directory name plus a hash of its vocabulary/config files."""
    digest = hashlib.sha256()
    for name in _TOKENIZER_FILES:
        path = model_dir / name
        if path.is_file():
            digest.update(name.encode())
            digest.update(path.read_bytes())
    name = model_dir.parent.name if model_dir.name == "model" else model_dir.name  # the packaged default
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return f"{slug}-{digest.hexdigest()[:10]}"


def load_tokenizer(model_dir: Path):
    """The model directory's (fast) tokenizer; never downloads."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir), use_fast=True)


def token_lengths(tokenizer, texts: list[str], cap: int) -> np.ndarray:
    """Tokens per text (special tokens included), counted up to ``cap + 1`` so that "longer than the cap"
    shows without tokenising long documents whole."""
    enc = tokenizer(texts, truncation=True, max_length=cap + 1, return_attention_mask=False)
    return np.array([len(ids) for ids in enc["input_ids"]], dtype=np.int64)


def tokenize_texts(tokenizer, texts: list[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """``(ids int32 [n, max_len], lengths int32 [n])``: the token-cache layout, for texts not in a cache."""
    enc = tokenizer(texts, truncation=True, max_length=max_len, padding="max_length", return_tensors="np")
    return enc["input_ids"].astype(np.int32), enc["attention_mask"].sum(axis=1).astype(np.int32)


@dataclass(frozen=True)
class TokenCacheSpec:
    """What a cache depends on; ``key`` names its directory. ``label_max_len`` 0: labels are cut like
    queries, at ``max_len``."""

    tokenizer_id: str
    max_len: int
    query_text: str
    label_text: str
    label_max_len: int = 0

    @property
    def labels_max_len(self) -> int:
        return self.label_max_len or self.max_len

    @property
    def key(self) -> str:
        fields = {"title": "t", "title+content": "tc"}
        key = f"{self.tokenizer_id}-len{self.max_len}-q{fields[self.query_text]}-l{fields[self.label_text]}"
        if self.labels_max_len != self.max_len:  # (one length for both keeps the key caches always had)
            key += f"-llen{self.labels_max_len}"
        return key


def join_text(title: str, content: str, fields: str) -> str:
    """The text that is encoded: the title, or the title and the (non-empty) content."""
    if fields == "title+content" and content:
        return f"{title} {content}"
    return title


def iter_texts(parquet: pq.ParquetFile, fields: str, batch_rows: int = _BATCH) -> Iterator[list[str]]:
    """The texts of a Parquet file of a prepared dataset, in chunks of ``batch_rows``."""
    columns = ["title", "content"] if fields == "title+content" else ["title"]
    for batch in parquet.iter_batches(batch_size=batch_rows, columns=columns):
        titles = batch.column("title").to_pylist()
        if fields == "title+content":
            contents = batch.column("content").to_pylist()
            yield [join_text(t, c, fields) for t, c in zip(titles, contents)]
        else:
            yield titles


class TokenCache:
    """Read access to one built cache."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.meta = json.loads((self.directory / "meta.json").read_text(encoding="utf-8"))
        self.max_len = int(self.meta["max_len"])
        self.pad_id = int(self.meta["pad_id"])
        self._arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, lengths)`` of a split, memory-mapped read-only."""
        if split not in self._arrays:
            ids = np.load(self.directory / f"{split}.ids.npy", mmap_mode="r")
            lengths = np.load(self.directory / f"{split}.len.npy")
            self._arrays[split] = (ids, lengths)
        return self._arrays[split]

    def take(self, split: str, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, lengths)`` of ``rows`` of a split, copied out of the file a window at a time by plain
        reads. Rows spread over the whole split (a shard's labels, every S-th one) touch every page of the
        file: through the memory map each page would stay resident in this process, a second copy of the
        split's tokens beside the rows; read into a bounded window instead, they never are."""
        rows = np.asarray(rows, dtype=np.int64)
        path = self.directory / f"{split}.ids.npy"
        mapped = np.load(path, mmap_mode="r")  # for its layout only: no page is read
        offset, (count, width), dtype = mapped.offset, mapped.shape, mapped.dtype
        del mapped
        row_bytes = width * dtype.itemsize
        window = max(1, TAKE_WINDOW_BYTES // row_bytes)
        order = np.argsort(rows, kind="stable")
        ordered = rows[order]
        out = np.empty((len(rows), width), dtype=dtype)
        with open(path, "rb") as handle:
            for first in (np.unique(ordered // window) * window).tolist():
                size = min(window, count - first)
                read = os.pread(handle.fileno(), size * row_bytes, offset + first * row_bytes)
                block = np.frombuffer(read, dtype=dtype).reshape(size, width)
                low, high = np.searchsorted(ordered, [first, first + size])
                out[order[low:high]] = block[ordered[low:high] - first]
        return out, np.load(self.directory / f"{split}.len.npy", mmap_mode="r")[rows]

    def batch(self, split: str, rows: np.ndarray) -> tuple["torch.Tensor", "torch.Tensor"]:
        """``(input_ids, attention_mask)`` for ``rows``, cut to the longest of them."""
        import torch

        ids, lengths = self.arrays(split)
        rows = np.asarray(rows, dtype=np.int64)
        row_lengths = lengths[rows]
        width = max(int(row_lengths.max()) if rows.size else 1, 1)
        input_ids = torch.from_numpy(np.asarray(ids[rows, :width], dtype=np.int64))
        mask = torch.arange(width)[None, :] < torch.from_numpy(row_lengths.astype(np.int64))[:, None]
        return input_ids, mask.long()


def _tokenize_split(tokenizer, parquet: pq.ParquetFile, fields: str, max_len: int, out_dir: Path, split: str,
                    progress: bool) -> int:
    num_rows = parquet.metadata.num_rows
    ids = np.lib.format.open_memmap(out_dir / f"{split}.ids.npy", mode="w+", dtype=np.int32,
                                    shape=(num_rows, max_len))
    lengths = np.lib.format.open_memmap(out_dir / f"{split}.len.npy", mode="w+", dtype=np.int32,
                                        shape=(num_rows,))
    start = 0
    with tqdm(total=num_rows, desc=f"tokenize {split}", unit="text", disable=not progress,
              mininterval=2.0) as bar:
        for texts in iter_texts(parquet, fields):
            enc = tokenizer(texts, truncation=True, max_length=max_len, padding="max_length",
                            return_attention_mask=True, return_tensors="np")
            stop = start + len(texts)
            ids[start:stop] = enc["input_ids"]
            lengths[start:stop] = enc["attention_mask"].sum(axis=1)
            start = stop
            bar.update(len(texts))
    ids.flush()
    lengths.flush()
    del ids, lengths
    return num_rows


def ensure_token_cache(parquet_files: Callable[[str], pq.ParquetFile], cache_dir: Path, model_dir: Path,
                       max_len: int, query_text: str, label_text: str, progress: bool = True,
                       label_max_len: int = 0) -> TokenCache:
    """Open the cache for these settings under ``cache_dir``, building it first if it does not exist yet
    (``parquet_files(split)`` opens a split of the dataset); label texts are cut at ``label_max_len`` (0:
    at ``max_len``, like queries)."""
    spec = TokenCacheSpec(tokenizer_id(model_dir), max_len, query_text, label_text, label_max_len)
    final = Path(cache_dir) / spec.key
    if (final / "meta.json").is_file():
        return TokenCache(final)
    with file_lock(final.parent / f".{spec.key}.lock"):
        if (final / "meta.json").is_file():  # another worker built it while we waited
            return TokenCache(final)
        tokenizer = load_tokenizer(model_dir)
        with atomic_dir(final) as tmp:
            counts = {}
            for split in SPLITS:
                labels = split == "labels"
                fields, length = (label_text, spec.labels_max_len) if labels else (query_text, max_len)
                counts[split] = _tokenize_split(tokenizer, parquet_files(split), fields, length, tmp, split,
                                                progress)
            write_json(tmp / "meta.json", {"tokenizer": spec.tokenizer_id, "model_dir": str(model_dir),
                                           "max_len": max_len, "label_max_len": spec.labels_max_len,
                                           "query_text": query_text, "label_text": label_text,
                                           "pad_id": int(tokenizer.pad_token_id or 0), "counts": counts})
    return TokenCache(final)
