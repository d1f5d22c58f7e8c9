"""The export bundle: a self-describing directory that is all Serve (or offline evaluation) needs.

    manifest.json        format, version, created, source run and checkpoint, config, counts,
                         sha256 of every file
    encoder/             the fine-tuned backbone (safetensors) and its tokenizer
    heads.safetensors    the query-side heads (DE projection, classifier projection)
    labels.parquet       id, uid, text of every label (those removed after training too: ids stay put)
    shards/00000/        index.faiss (faiss's own binary format) + label_ids.npy, one directory per shard
    neighbours/          index.faiss + labels.npz: the training queries of the query-neighbour channel
                         (only when its weight is above 0; :mod:`xmc.scoring.neighbours`)

Nothing is pickled. The bundle is written into a temporary directory, manifest last, and renamed into place,
so a directory with a manifest is complete; loading re-hashes the files a component uses and refuses a
missing or altered one by name.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from xmc import storage
from xmc.data.errors import DataError
from xmc.io import sha256_file

FORMAT = "xmc-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
NEIGHBOURS = "neighbours"


class BundleError(DataError):
    """A bundle that is missing, partial, corrupt or of another format: ``PATH: what is wrong``."""

    def __init__(self, path: str | os.PathLike, message: str):
        super().__init__(path, None, message)


def shard_dir(shard: int) -> str:
    return f"shards/{shard:05d}"


def file_digests(directory: Path) -> dict[str, str]:
    """sha256 of every file under ``directory`` (except the manifest), keyed by POSIX relative path."""
    return {path.relative_to(directory).as_posix(): sha256_file(path)
            for path in sorted(directory.rglob("*")) if path.is_file() and path.name != MANIFEST}


class Bundle:
    """Read access to an exported bundle at a path or a storage URI; every loader verifies the checksums of
    the files it reads.

    A remote bundle's files are copied into this node's cache (:func:`xmc.storage.cache_root`) under its
    version, part by part as they are loaded: a shard replica fetches its shard, the ingress the encoder and
    the label texts, never the whole bundle.
    """

    def __init__(self, location: str | os.PathLike):
        self.location = storage.resolve(location)
        path = storage.join(self.location, MANIFEST)
        if not storage.is_dir(self.location):
            raise BundleError(self.location, "no such bundle directory; expected the --out of jobs/export.py")
        if not storage.is_file(path):
            raise BundleError(path, "missing: the bundle is partial or not a bundle "
                                    "(jobs/export.py writes the manifest last); re-export it")
        try:
            manifest = json.loads(storage.read_text(path))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise BundleError(path, f"unreadable ({err}); re-export the bundle") from None
        if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
            raise BundleError(path, f"format {manifest.get('format')!r} v{manifest.get('format_version')}, "
                                    f"expected {FORMAT!r} v{FORMAT_VERSION}")
        self.manifest = manifest
        self.version: str = manifest["version"]
        self.num_labels: int = int(manifest["counts"]["labels"])  # labels the shards hold
        # rows of labels.parquet: more than num_labels when labels were removed after training
        self.num_label_ids: int = int(manifest["counts"].get("label_ids", self.num_labels))
        self.num_shards: int = int(manifest["counts"]["shards"])
        self.directory = (storage.local_path(self.location) if storage.is_local(self.location)
                          else storage.cache_root() / "bundles" / self.version)

    def _fetch(self, files: list[str]) -> None:
        """Copy the files of a remote bundle this node does not hold yet into its cache directory."""
        if storage.is_local(self.location):
            return
        missing = [rel for rel in files if not (self.directory / rel).is_file()]
        if not missing:
            return
        with storage.file_lock(self.directory.parent / f".{self.version}.lock"):
            for rel in missing:
                if not (self.directory / rel).is_file():  # else fetched by another worker meanwhile
                    storage.download_file(storage.join(self.location, rel), self.directory / rel)

    def verify(self, prefix: str = "") -> None:
        """Check that every manifest file under ``prefix`` exists and has its recorded sha256."""
        files = {rel: digest for rel, digest in self.manifest["files"].items() if rel.startswith(prefix)}
        if not files:
            raise BundleError(storage.join(self.location, prefix),
                              "not listed in the manifest; the bundle is incomplete")
        self._fetch(list(files))
        for rel, expected in files.items():
            path = self.directory / rel
            if not path.is_file():
                raise BundleError(path, "missing: the bundle is partial; re-export it")
            actual = sha256_file(path)
            if actual != expected:
                raise BundleError(path, f"sha256 {actual[:16]}… does not match the manifest's "
                                        f"{expected[:16]}…: the file is corrupt; re-export the bundle")

    def load_shard(self, shard: int, device: str = "cpu"):
        """The faiss index and global label ids of one shard (checksums verified), on ``device`` when it is
        a GPU (:meth:`xmc.index.shards.ShardIndex.load`)."""
        from xmc.index.shards import ShardIndex

        if not 0 <= shard < self.num_shards:
            raise BundleError(self.directory,
                              f"shard {shard} requested but the bundle has {self.num_shards} shards")
        self.verify(shard_dir(shard) + "/")
        return ShardIndex.load(self.directory / shard_dir(shard), device)

    def load_neighbours(self):
        """The query-neighbour channel's memory (checksums verified), or None when the bundle has none."""
        from xmc.scoring.neighbours import NeighbourMemory

        if "neighbours" not in self.manifest:
            return None
        self.verify(NEIGHBOURS + "/")
        return NeighbourMemory.load(self.directory / NEIGHBOURS)

    def load_labels(self) -> tuple[list, list[str]]:
        """``(uids, texts)`` of all label ids, in id order."""
        import pyarrow.parquet as pq

        self.verify("labels.parquet")
        table = pq.read_table(self.directory / "labels.parquet")
        ids = table.column("id").to_numpy()
        if not np.array_equal(ids, np.arange(self.num_label_ids)):
            raise BundleError(self.directory / "labels.parquet", "ids are not 0..label_ids-1 in order")
        return table.column("uid").to_pylist(), table.column("text").to_pylist()

    def load_query_model(self, device: str = "cpu"):
        """The query tower (tokenizer, fine-tuned encoder, heads) that produces the vectors the shards index:
        a :class:`~xmc.scoring.model.ScoringModel` without label state."""
        from xmc.index.query_encoder import load_query_model

        self.verify("encoder/")
        self.verify("heads.safetensors")
        return load_query_model(self.directory, self.manifest["query"], device=device)
