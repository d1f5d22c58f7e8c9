"""Answer queries from an exported bundle: the public Python API, and the parts Serve deploys.

    from xmc import Predictor
    predictor = Predictor.from_bundle("bundles/demo")
    predictor.predict(["how do I keep pasta from sticking"], k=5)
    # -> [[Prediction(id=..., uid=..., label='pasta', score=...), ...]]

A :class:`Predictor` loads a bundle's parts once: the query tower (with the query-neighbour channel's
memory when the bundle has one), the label index shards and the label texts. ``jobs/evaluate.py --bundle``
uses a whole one; the Serve app splits one across deployments (the ingress loads the query tower and label
texts, each shard replica one shard) and ranks what the shards found with :meth:`Predictor.rank`, so a
served answer and an offline answer are the same computation.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from xmc.index.bundle import Bundle
from xmc.index.shards import ShardIndex, merge_topk
from xmc.models.config import HeadsConfig

#: Texts encoded and searched together by :meth:`Predictor.topk` (bounds the memory of one pass).
CHUNK_TEXTS = 4096


class Prediction(NamedTuple):
    """One ranked label: its id (row of the bundle's labels), uid, text and fused score."""

    id: int
    uid: str
    label: str
    score: float


class Predictor:
    """Query tower + label index shards + label texts of one bundle version (each part optional)."""

    def __init__(self, bundle: Bundle, query_model=None, shards: Sequence[ShardIndex] = (),
                 labels: tuple[list, list[str]] | None = None, neighbours=None):
        self.bundle = bundle
        self.query_model = query_model
        self.shards = list(shards)
        self.uids, self.texts = labels if labels is not None else (None, None)
        self.neighbours = neighbours  # a NeighbourMemory: the fused top candidates are re-ranked with it
        self.heads = HeadsConfig(**bundle.manifest["query"]["heads"])

    @classmethod
    def from_bundle(cls, path: str | os.PathLike, *, shards: Sequence[int] | None = None,
                    encoder: bool = True, labels: bool = True, device: str = "cpu") -> Predictor:
        """Load ``path`` (checksums verified): the query tower (and the query-neighbour channel's memory, the
        query side's part) when ``encoder``, the label index shards ``shards`` (default: all), the label texts
        when ``labels``; on ``device`` (a GPU: the query tower and the shards' flat and IVF indexes)."""
        bundle = Bundle(path)
        numbers = range(bundle.num_shards) if shards is None else shards
        return cls(bundle, bundle.load_query_model(device) if encoder else None,
                   [bundle.load_shard(number, device) for number in numbers],
                   bundle.load_labels() if labels else None,
                   bundle.load_neighbours() if encoder else None)

    @property
    def version(self) -> str:
        return self.bundle.version

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """``float32 [len(texts), dim]`` query vectors, as the label index is searched with."""
        if self.query_model is None:
            raise ValueError("this predictor was loaded without its query tower (encoder=False)")
        if not texts:
            return np.zeros((0, int(self.bundle.manifest["counts"]["dim"])), dtype=np.float32)
        return self.query_model.query_vectors(list(texts))

    def search_depth(self, k: int) -> int:
        """How many labels each shard returns for an answer of ``k``: the candidates the query-neighbour
        channel re-ranks, when there is one."""
        return max(k, self.heads.neighbour_candidates) if self.neighbours is not None else k

    def rank(self, vectors: np.ndarray, parts: list[tuple[np.ndarray, np.ndarray]], k: int
             ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` ``(scores, label ids)`` of the query ``vectors`` from every shard's top
        :meth:`search_depth` (``parts``): merged, and re-ranked by the query-neighbour channel when the bundle
        has one (:meth:`xmc.scoring.neighbours.NeighbourMemory.rerank`)."""
        scores, ids = merge_topk(parts, self.search_depth(k))
        if self.neighbours is not None:
            de = int(self.bundle.manifest["neighbours"]["de_dim"])
            ids, scores = self.neighbours.rerank(ids, scores, vectors[:, :de], self.heads)
        return scores[:, :k], ids[:, :k]

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` ``(scores, label ids)`` over this predictor's shards (:meth:`rank`); ids are −1 where
        fewer than ``k`` labels exist."""
        if not self.shards:
            raise ValueError("this predictor holds no label index shard")
        depth = self.search_depth(k)
        return self.rank(vectors, [shard.search(vectors, depth) for shard in self.shards], k)

    def topk(self, texts: Sequence[str], k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """``(ids int64 [n, k], scores float32 [n, k])`` for raw texts, in chunks of :data:`CHUNK_TEXTS`."""
        ids, scores = [], []
        for start in range(0, len(texts), CHUNK_TEXTS):
            chunk_scores, chunk_ids = self.search(self.encode(texts[start:start + CHUNK_TEXTS]), k)
            ids.append(chunk_ids)
            scores.append(chunk_scores)
        if not ids:
            return np.zeros((0, k), dtype=np.int64), np.zeros((0, k), dtype=np.float32)
        return np.concatenate(ids), np.concatenate(scores)

    def describe(self, ids: np.ndarray, scores: np.ndarray) -> list[list[Prediction]]:
        """Per row, the ranked :class:`Prediction` of each id (empty slots, id −1, left out)."""
        if self.texts is None:
            raise ValueError("this predictor was loaded without the label texts (labels=False)")
        return [[Prediction(label, self.uids[label], self.texts[label], score)
                 for label, score in zip(row_ids, row_scores) if label >= 0]
                for row_ids, row_scores in zip(np.asarray(ids).tolist(), np.asarray(scores).tolist())]

    def predict(self, texts: Sequence[str], k: int = 10) -> list[list[Prediction]]:
        """The top-``k`` labels of each text, best first."""
        if isinstance(texts, str):
            raise TypeError("predict takes a list of texts; wrap a single text in a list")
        return self.describe(*self.topk(texts, k))
