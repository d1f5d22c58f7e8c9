"""A lexical channel beside the neural scores: TF-IDF over the encoder's own word pieces.

Where a query's words name its labels (tags of questions, topics of newswires), an exact-word match carries
signal that a small encoder blurs; PECOS's XR-Transformer feeds TF-IDF features to its ranker for that
reason. Here the lexical score of a label for a query is the cosine between the query's TF-IDF vector and the
label's: the mean of the TF-IDF vectors of the training queries tagged with it (a Rocchio centroid) plus its
own text's, so a label without training queries is matched by its text alone. The vocabulary is the word
pieces of the token cache (no second tokenizer), the IDF counted on the training queries.

It re-ranks the neural model's candidates: ``fused + lexical_weight · lexical`` over each query's top
candidates (:func:`xmc.scoring.fusion.rerank`), with the weight chosen on a validation hold-out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp


def term_matrix(ids: np.ndarray, lengths: np.ndarray, vocabulary: int, skip: np.ndarray) -> sp.csr_matrix:
    """``[n, vocabulary]`` term counts of token-id rows (the token cache's layout), without the ``skip`` ids
    (special tokens)."""
    ids = np.asarray(ids)
    n, width = ids.shape
    mask = np.arange(width)[None, :] < np.asarray(lengths)[:, None]
    mask &= ~np.isin(ids, skip)
    rows = np.repeat(np.arange(n), mask.sum(axis=1))
    matrix = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, ids[mask])), shape=(n, vocabulary))
    matrix.sum_duplicates()
    return matrix


def normalize_rows(matrix: sp.csr_matrix) -> sp.csr_matrix:
    norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=1)).ravel())
    return sp.csr_matrix(sp.diags(1.0 / np.maximum(norms, 1e-12)) @ matrix, dtype=np.float32)


@dataclass
class LexicalChannel:
    """IDF weights and a sparse TF-IDF vector per label (``labels``: ``[L, vocabulary]``, rows L2-normal)."""

    idf: np.ndarray
    labels: sp.csr_matrix
    skip: np.ndarray

    @classmethod
    def fit(cls, query_tokens: tuple[np.ndarray, np.ndarray], positives: sp.csr_matrix,
            label_tokens: tuple[np.ndarray, np.ndarray], vocabulary: int, skip: np.ndarray) -> LexicalChannel:
        """From the training queries' tokens and their positives (``[n, L]``) and every label's tokens."""
        counts = term_matrix(*query_tokens, vocabulary, skip)
        document_frequency = np.bincount(counts.indices, minlength=vocabulary)
        idf = np.log((1 + counts.shape[0]) / (1 + document_frequency)).astype(np.float32) + 1.0
        queries = cls._weigh(counts, idf)
        centroids = normalize_rows(sp.csr_matrix(positives.T, dtype=np.float32) @ queries)
        text = cls._weigh(term_matrix(*label_tokens, vocabulary, skip), idf)
        return cls(idf, normalize_rows(centroids + text), np.asarray(skip))

    @staticmethod
    def _weigh(counts: sp.csr_matrix, idf: np.ndarray) -> sp.csr_matrix:
        weighted = counts.copy()
        weighted.data = np.log1p(weighted.data) * idf[weighted.indices]
        return normalize_rows(weighted)

    def queries(self, tokens: tuple[np.ndarray, np.ndarray]) -> sp.csr_matrix:
        """The TF-IDF vectors of queries given as token-id rows."""
        return self._weigh(term_matrix(*tokens, len(self.idf), self.skip), self.idf)

    def scores(self, queries: sp.csr_matrix, candidates: np.ndarray) -> np.ndarray:
        """``[n, k]`` cosines of each query with each of its candidate labels (−1 ids score 0)."""
        candidates = np.asarray(candidates)
        out = np.zeros(candidates.shape, dtype=np.float32)
        valid = candidates >= 0
        rows = np.repeat(np.arange(len(candidates)), valid.sum(axis=1))
        labels = candidates[valid]
        out[valid] = np.asarray(queries[rows].multiply(self.labels[labels]).sum(axis=1)).ravel()
        return out

