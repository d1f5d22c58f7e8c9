"""The lexical channel: TF-IDF over word-piece ids, labels as the centroid of their training queries plus
their own text (the re-ranking that adds its cosine to the neural score is tests/test_neighbours.py's)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from xmc.scoring.lexical import LexicalChannel, term_matrix

PAD, CLS, SEP = 0, 1, 2


def tokens(rows: list[list[int]], width: int = 6) -> tuple[np.ndarray, np.ndarray]:
    ids = np.zeros((len(rows), width), dtype=np.int32)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = row
    return ids, np.array([len(row) for row in rows], dtype=np.int32)


def test_term_counts_skip_special_tokens_and_padding():
    counts = term_matrix(*tokens([[CLS, 5, 5, 7, SEP], [CLS, 7, SEP]]), 10, np.array([PAD, CLS, SEP]))
    assert counts.toarray()[:, 5:8].tolist() == [[2, 0, 1], [0, 0, 1]]
    assert counts[:, :3].nnz == 0


def test_a_query_scores_highest_the_label_whose_queries_and_text_share_its_words():
    # labels: 0 "pasta" (id 5) from queries about 5 and 6, 1 "bread" (id 8) from queries about 8 and 9,
    # 2 "salt" (id 4) without training queries: its text alone
    queries = tokens([[CLS, 5, 6, SEP], [CLS, 5, SEP], [CLS, 8, 9, SEP], [CLS, 9, SEP]])
    positives = sp.csr_matrix(np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 1, 0]], dtype=np.float32))
    labels = tokens([[CLS, 5, SEP], [CLS, 8, SEP], [CLS, 4, SEP]])
    channel = LexicalChannel.fit(queries, positives, labels, 10, np.array([PAD, CLS, SEP]))
    assert np.allclose(sp.linalg.norm(channel.labels, axis=1), 1.0)
    asked = channel.queries(tokens([[CLS, 6, SEP], [CLS, 4, 9, SEP]]))
    scores = channel.scores(asked, np.array([[0, 1, 2], [0, 1, 2]]))
    assert scores[0].argmax() == 0 and scores[0, 1] == 0 and scores[0, 2] == 0  # 6 only ever meant pasta
    assert scores[1, 0] == 0 and scores[1, 1] > 0 and scores[1, 2] > 0  # 9 -> bread, 4 -> salt by its text
    assert channel.scores(asked, np.array([[-1, 0, 1], [2, -1, -1]]))[1, 1] == 0  # empty slots score 0

