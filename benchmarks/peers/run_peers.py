"""TF-IDF baselines for benchmarks/quality.py, run inside the peers' own venv (numpy<2, scipy<1.14).

    python run_peers.py WORKDIR

Reads ``WORKDIR/{train,test}_texts.json`` and ``WORKDIR/train_labels.npz`` (a scipy CSR matrix), fits
TF-IDF features, trains PECOS XR-Linear and napkinXC PLT, and writes the top-100 of each as
``WORKDIR/{pecos,napkinxc}.npz`` (``indices`` int64, ``scores`` float32, ``seconds`` = train + predict).
Metrics are computed by the caller with the project's own evaluator. Uses nothing from the project.
"""

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer

TOP_K = 100


def dense_top_k(rows: list[list[tuple[int, float]]], k: int) -> tuple[np.ndarray, np.ndarray]:
    indices = np.full((len(rows), k), -1, dtype=np.int64)
    scores = np.full((len(rows), k), -np.inf, dtype=np.float32)
    for i, row in enumerate(rows):
        row = sorted(row, key=lambda pair: -pair[1])[:k]
        for j, (label, score) in enumerate(row):
            indices[i, j], scores[i, j] = label, score
    return indices, scores


def csr_top_k(matrix: sp.csr_matrix, k: int) -> tuple[np.ndarray, np.ndarray]:
    matrix = matrix.tocsr()
    rows = [list(zip(matrix.indices[a:b].tolist(), matrix.data[a:b].tolist()))
            for a, b in zip(matrix.indptr[:-1], matrix.indptr[1:])]
    return dense_top_k(rows, k)


def run_pecos(x_train, y_train, x_test):
    from pecos.xmc import Indexer, LabelEmbeddingFactory
    from pecos.xmc.xlinear.model import XLinearModel

    started = time.perf_counter()
    label_features = LabelEmbeddingFactory.create(y_train, x_train, method="pifa")
    cluster_chain = Indexer.gen(label_features, nr_splits=16, max_leaf_size=100)
    model = XLinearModel.train(x_train, y_train, C=cluster_chain)
    predictions = model.predict(x_test, only_topk=TOP_K, beam_size=50)
    return (*csr_top_k(predictions, TOP_K), time.perf_counter() - started)


def run_napkinxc(x_train, y_train, x_test):
    from napkinxc.models import PLT

    started = time.perf_counter()
    labels = [y_train.indices[a:b].tolist() for a, b in zip(y_train.indptr[:-1], y_train.indptr[1:])]
    with tempfile.TemporaryDirectory() as model_dir:
        model = PLT(model_dir)
        model.fit(x_train, labels)
        predictions = model.predict_proba(x_test, top_k=TOP_K)
    return (*dense_top_k(predictions, TOP_K), time.perf_counter() - started)


def main() -> None:
    workdir = Path(sys.argv[1])
    train = json.loads((workdir / "train_texts.json").read_text())
    test = json.loads((workdir / "test_texts.json").read_text())
    y_train = sp.load_npz(workdir / "train_labels.npz").tocsr().astype(np.float32)
    vectorizer = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), min_df=1, max_features=500000,
                                 dtype=np.float32)
    x_train = vectorizer.fit_transform(train).tocsr()
    x_test = vectorizer.transform(test).tocsr()
    for name, runner in (("pecos", run_pecos), ("napkinxc", run_napkinxc)):
        indices, scores, seconds = runner(x_train, y_train, x_test)
        np.savez(workdir / f"{name}.npz", indices=indices, scores=scores, seconds=np.float64(seconds))
        print(f"{name}: {seconds:.1f}s", flush=True)


if __name__ == "__main__":
    main()
