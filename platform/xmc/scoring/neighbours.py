"""A query-neighbour channel beside the fused score: the labels of the training queries nearest to a query.

The heads score a label by how well its own vectors match the query. The training queries carry a second
kind of evidence: a query whose nearest training queries are tagged with a label is likely tagged with it
too, whatever that label's vectors say (instance-based XMC, as SLEEC and AnnexML predict). It catches what a
single vector per label blurs: labels used in several distinct senses, and the habits of the annotators.

A query's neighbours are its ``neighbours`` nearest training queries by the cosine of their DE vectors
(the same query tower, so no second model). Their weights are a softmax of those cosines at
``temperature``, and a label's neighbour score is the summed weight of the neighbours tagged with it, in
[0, 1]. It re-ranks each query's top candidates of the fused score: ``fused + neighbour_weight ·
neighbour``, with the weight chosen on a validation hold-out (:mod:`xmc.evaluation.calibration`), where
0 turns the channel off. Labels no training query is tagged with always score 0 here, so the weight is
traded against them on validation like the cold-start offset is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from xmc.mining.ann import VectorSource, build_index, search
from xmc.mining.config import AnnConfig
from xmc.models.config import HeadsConfig
from xmc.scoring.fusion import rerank

#: Files of a saved memory (a bundle's ``neighbours/`` part).
INDEX_FILE, LABELS_FILE = "index.faiss", "labels.npz"


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), np.float32(1e-12))


def neighbour_weights(similarities: np.ndarray, temperature: float) -> np.ndarray:
    """``[n, K]`` softmax of each row's neighbour cosines at ``temperature``; a missing neighbour (similarity
    −inf) weighs 0, and a row with none is all 0."""
    logits = np.asarray(similarities, dtype=np.float64) / temperature
    top = logits.max(axis=1, keepdims=True)
    weights = np.exp(logits - np.where(np.isfinite(top), top, 0.0))
    total = weights.sum(axis=1, keepdims=True)
    return (weights / np.where(total > 0, total, 1.0)).astype(np.float32)


def candidate_scores(weights: np.ndarray, rows: np.ndarray, labels: sp.csr_matrix,
                     candidates: np.ndarray) -> np.ndarray:
    """``[n, C]`` neighbour scores of each query's candidate labels: ``Σ_j weights[i, j] · labels[rows[i, j],
    candidates[i, c]]``. ``rows``: the neighbours' rows of ``labels`` (−1: none); candidate ids −1 score 0, as
    do ids past ``labels``' columns (labels added after training: no training query is tagged with them)."""
    weights, rows, candidates = np.asarray(weights), np.asarray(rows), np.asarray(candidates)
    n = len(rows)
    valid = rows >= 0
    spread = sp.csr_matrix((weights[valid], (np.repeat(np.arange(n), valid.sum(axis=1)), rows[valid])),
                           shape=(n, labels.shape[0]))
    per_label = (spread @ labels).tocsr()  # [n, L], a few nonzeros a row
    out = np.zeros(candidates.shape, dtype=np.float32)
    present = (candidates >= 0) & (candidates < labels.shape[1])
    if present.any():
        queries = np.repeat(np.arange(len(candidates)), present.sum(axis=1))
        out[present] = np.asarray(per_label[queries, candidates[present]]).ravel()
    return out


def rerank_top(indices: np.ndarray, scores: np.ndarray, extra: np.ndarray, weight: float, candidates: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """Each row's first ``candidates`` re-ranked by ``scores + weight · extra`` (``extra``: their channel
    scores, ``[n, candidates]``); the rest keep their order after them, which stays sorted because the channel
    only adds to a score."""
    head = rerank(indices[:, :candidates], scores[:, :candidates], extra[:, :candidates], weight)
    return (np.concatenate([head[0], indices[:, candidates:]], axis=1),
            np.concatenate([head[1], scores[:, candidates:]], axis=1))


@dataclass
class NeighbourMemory:
    """The training queries a query's neighbours come from: an index of their unit DE vectors (row i is
    training query i of the memory) and their labels (``[N, L]`` CSR, binary)."""

    index: object
    labels: sp.csr_matrix

    @classmethod
    def build(cls, vectors: np.ndarray | VectorSource, labels: sp.csr_matrix,
              ann: AnnConfig | None = None) -> NeighbourMemory:
        """From the training queries' DE vectors (made unit here) and their label rows; the index kind is
        ``ann``'s choice for that many vectors (exact below ``ann.exact_below``)."""
        source = vectors if isinstance(vectors, VectorSource) else VectorSource.of(vectors)
        unit = VectorSource(source.count, lambda positions: unit_rows(source.fetch(positions)), source.dim)
        labels = sp.csr_matrix(labels, dtype=np.float32)
        if labels.shape[0] != source.count:
            raise ValueError(f"{source.count} query vectors but {labels.shape[0]} label rows")
        labels.data[:] = 1.0
        return cls(build_index(unit, ann or AnnConfig()), labels)

    @property
    def size(self) -> int:
        return int(self.labels.shape[0])

    def scores(self, queries_de: np.ndarray, candidates: np.ndarray, neighbours: int,
               temperature: float) -> np.ndarray:
        """``[n, C]`` neighbour scores of each query's ``candidates`` (:func:`candidate_scores`) from its
        ``neighbours`` nearest training queries."""
        if not len(queries_de):
            return np.zeros(np.shape(candidates), dtype=np.float32)
        similarities, rows = search(self.index, unit_rows(queries_de), neighbours)
        similarities = np.where(rows >= 0, similarities, -np.inf)
        return candidate_scores(neighbour_weights(similarities, temperature), rows, self.labels, candidates)

    def rerank(self, indices: np.ndarray, scores: np.ndarray, queries_de: np.ndarray, heads: HeadsConfig
               ) -> tuple[np.ndarray, np.ndarray]:
        """A fused top-k ``(indices, scores)`` with its top ``heads.neighbour_candidates`` re-ranked by the
        channel at ``heads.neighbour_weight`` (:func:`rerank_top`): what evaluation, bundles and Serve rank by
        when the weight is above 0."""
        candidates = min(heads.neighbour_candidates, indices.shape[1])
        extra = self.scores(queries_de, indices[:, :candidates], heads.neighbours,
                            heads.neighbour_temperature)
        return rerank_top(indices, scores, extra, heads.neighbour_weight, candidates)

    def save(self, directory: str | Path) -> None:
        import faiss

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.index, str(directory / INDEX_FILE))
        np.savez(directory / LABELS_FILE, indptr=self.labels.indptr, indices=self.labels.indices,
                 shape=np.asarray(self.labels.shape, dtype=np.int64))

    @classmethod
    def load(cls, directory: str | Path) -> NeighbourMemory:
        import faiss

        directory = Path(directory)
        with np.load(directory / LABELS_FILE, allow_pickle=False) as saved:
            indices = saved["indices"]
            labels = sp.csr_matrix((np.ones(len(indices), dtype=np.float32), indices, saved["indptr"]),
                                   shape=tuple(int(n) for n in saved["shape"]))
        return cls(faiss.read_index(str(directory / INDEX_FILE)), labels)



def training_memory(scoring, queries: tuple[np.ndarray, np.ndarray], rows: np.ndarray, labels: sp.csr_matrix,
                    ann: AnnConfig | None = None) -> NeighbourMemory:
    """The memory of training queries ``rows`` of the token arrays ``queries``: their DE vectors through
    ``scoring``'s query tower (a :class:`~xmc.scoring.model.ScoringModel`, this process alone), made a chunk
    at a time into the index, and their rows of ``labels``."""
    return NeighbourMemory.build(scoring.query_de_source(queries, rows), labels[np.asarray(rows)], ann)
