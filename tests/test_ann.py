"""Label search: the exact search in torch (a GPU worker's flat index with faiss-cpu) answers like faiss's."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
import torch

from xmc.data.dataset import PreparedDataset
from xmc.data.tokens import load_tokenizer, tokenize_texts
from xmc.mining.ann import TorchFlatIndex, build_index, search, sharded_topk
from xmc.mining.config import AnnConfig
from xmc.models.encoder import TextEncoder, encode_tokens, normalized, resolve_model_dir


@pytest.fixture(scope="module")
def cooking_vectors(cooking_prepared) -> tuple[np.ndarray, np.ndarray]:
    """Zero-shot embeddings of 400 cooking test questions and all 736 tags."""
    dataset = PreparedDataset(cooking_prepared)
    encoder = TextEncoder(resolve_model_dir("default")).eval()
    tokenizer = load_tokenizer(encoder.model_dir)

    def embed(texts: list[str]) -> np.ndarray:
        return encode_tokens(normalized(encoder), *tokenize_texts(tokenizer, texts, max_len=32),
                             batch_size=128)

    return embed(dataset.texts("test")[:400]), embed(dataset.texts("labels"))


def assert_same_topk(ours: tuple[np.ndarray, np.ndarray], reference: tuple[np.ndarray, np.ndarray]) -> None:
    (scores, ids), (ref_scores, ref_ids) = ours, reference
    assert ids.dtype == ref_ids.dtype == np.int64 and scores.shape == ref_scores.shape
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)
    # ids agree wherever the scores do not tie (a tie may be broken either way)
    gaps = np.diff(ref_scores, axis=1)
    distinct = np.ones_like(ids, dtype=bool)
    distinct[:, 1:] &= gaps < -1e-5
    distinct[:, :-1] &= gaps < -1e-5
    assert distinct.mean() > 0.9
    np.testing.assert_array_equal(ids[distinct], ref_ids[distinct])


def test_torch_exact_search_equals_faiss_flat(cooking_vectors):
    queries, labels = cooking_vectors
    reference = search(build_index(labels, AnnConfig(kind="flat")), queries, 10)
    # 37 queries per score matrix: the chunking and the last, short chunk are exercised
    ours = search(TorchFlatIndex(labels, "cpu", max_scores=37 * len(labels)), queries, 10)
    assert_same_topk(ours, reference)
    assert ours[1][0, 0] != ours[1][1, 0] or ours[1][0, 1] != ours[1][1, 1]  # not one answer for everyone


def test_callers_off_the_gpu_keep_faiss_indexes(cooking_vectors):
    """Export and serving pass no device, a CPU worker passes its CPU: all get faiss indexes they can save."""
    _, labels = cooking_vectors
    assert isinstance(build_index(labels, AnnConfig()), faiss.IndexFlatIP)
    assert isinstance(build_index(labels, AnnConfig(), device=torch.device("cpu")), faiss.IndexFlatIP)


@pytest.mark.gpu
def test_gpu_worker_searches_on_its_gpu(cooking_vectors):
    queries, labels = cooking_vectors
    index = build_index(labels, AnnConfig(), device=torch.device("cuda", 0))
    if not hasattr(faiss, "StandardGpuResources"):
        assert isinstance(index, TorchFlatIndex) and index.vectors.is_cuda
    assert isinstance(build_index(labels, AnnConfig(use_gpu=False), device="cuda"), faiss.IndexFlatIP)
    assert_same_topk(search(index, queries, 10), search(build_index(labels, AnnConfig()), queries, 10))


@pytest.mark.gpu
def test_a_serving_shard_searches_on_the_gpu(cooking_vectors, tmp_path):
    """With faiss's GPU build a shard's flat index moves to the GPU; the answers are the CPU's."""
    from xmc.index.shards import ShardIndex

    queries, labels = cooking_vectors
    index = faiss.IndexFlatIP(labels.shape[1])
    index.add(labels)
    faiss.write_index(index, str(tmp_path / "index.faiss"))
    np.save(tmp_path / "label_ids.npy", np.arange(len(labels), dtype=np.int64))
    cpu, gpu = ShardIndex.load(tmp_path), ShardIndex.load(tmp_path, "cuda")
    if hasattr(faiss, "StandardGpuResources"):
        assert type(gpu.index).__name__.startswith("Gpu")
    assert_same_topk(gpu.search(queries, 10), cpu.search(queries, 10))


def _search_own_labels(rank, world, queries, labels):
    own, total = np.arange(rank, len(labels), world), len(labels)
    # chunks of 150 queries (the last one short)
    flat = sharded_topk(queries, labels[own], own, total, 10, AnnConfig(kind="flat"), batch_rows=150)
    # auto picks IVF for 736 labels above exact_below=500, though each shard alone is below it
    ivf = [sharded_topk(queries, labels[own], own, total, 10,
                        AnnConfig(exact_below=500, ivf_nprobe=probe)) for probe in (1000, 1)]
    return flat, ivf


def test_workers_that_each_index_their_labels_find_the_top_k_of_all(cooking_vectors):
    """Two gloo workers, each holding every second label's vector, get the top-10 one index of all gives."""
    from conftest import run_on_workers

    queries, labels = cooking_vectors
    results = run_on_workers(_search_own_labels, 2, queries, labels, timeout=120)
    reference = search(build_index(labels, AnnConfig(kind="flat")), queries, 10)
    for flat, (every_list, one_list) in results:  # every worker gets the merged answer
        assert_same_topk(flat, reference)
        assert_same_topk(every_list, reference)  # every list probed: IVF is exact
        assert not np.array_equal(one_list[1], reference[1])  # one list probed: it was IVF, not flat
    alone = sharded_topk(queries, labels, np.arange(len(labels)), len(labels), 10, AnnConfig(kind="flat"))
    assert all(np.array_equal(a, b) for a, b in zip(alone, reference))  # one worker: the plain search


def counted_source(vectors: np.ndarray):
    """A :class:`VectorSource` of ``vectors`` and the list of how many vectors each of its fetches made."""
    from xmc.mining.ann import VectorSource

    asked: list[int] = []

    def fetch(positions: np.ndarray) -> np.ndarray:
        asked.append(len(positions))
        return vectors[positions]

    return VectorSource(len(vectors), fetch), asked


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_an_index_built_a_chunk_at_a_time_is_the_index_of_the_whole_array(cooking_vectors, kind, monkeypatch):
    """A source's vectors are made and added in chunks (here of 100 vectors, so the last one is short) and
    the index answers as the one built from the whole array; the digest is that of the array's bytes."""
    import hashlib

    from xmc.mining import ann

    queries, labels = cooking_vectors
    monkeypatch.setattr(ann, "CHUNK_BYTES", 100 * labels.shape[1] * 4)
    source, asked = counted_source(labels)
    config = AnnConfig(kind=kind, ivf_lists=8, ivf_nprobe=2, ivf_train_per_list=40)
    digest = hashlib.sha256()
    chunked = build_index(source, config, digest=digest)
    whole = build_index(labels, config)
    assert chunked.ntotal == whole.ntotal == len(labels)
    made = asked[1:] if kind == "ivf" else asked
    if kind == "ivf":  # the training sample first (8 lists x 40 points), then the vectors for the lists
        assert asked[0] == 320
    assert max(made) == 100 and sum(made) == len(labels)  # every vector made once, 100 at a time
    if kind == "flat":  # the code store was given its final size up front, not grown chunk by chunk
        assert chunked.codes.size() == len(labels) * labels.shape[1] * 4
    assert digest.hexdigest() == hashlib.sha256(np.ascontiguousarray(labels).tobytes()).hexdigest()
    if kind == "hnsw":  # the graph depends on the insertion batches; its answers still agree
        found, expected = search(chunked, queries, 10)[1], search(whole, queries, 10)[1]
        assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, expected)]) > 0.97
    else:
        assert_same_topk(search(chunked, queries, 10), search(whole, queries, 10))


def test_an_ivf_trains_on_at_most_half_the_vectors_so_no_second_copy_is_made(cooking_vectors, monkeypatch):
    """With lists x 256 training points above the count, the sample is half the vectors (not all of them,
    which would be held beside the index as it fills); every vector is then made again, chunk by chunk."""
    from xmc.mining import ann

    queries, labels = cooking_vectors
    monkeypatch.setattr(ann, "CHUNK_BYTES", 100 * labels.shape[1] * 4)
    source, asked = counted_source(labels)
    config = AnnConfig(kind="ivf", ivf_lists=8, ivf_nprobe=8)  # 8 x 256 points asked for: more than 736
    index = build_index(source, config)
    assert asked[0] == len(labels) // 2 and max(asked[1:]) == 100 and sum(asked[1:]) == len(labels)
    exact = build_index(labels, AnnConfig(kind="flat"))
    assert_same_topk(search(index, queries, 10), search(exact, queries, 10))


def test_an_hnsw_index_filled_chunk_by_chunk_never_regrows_its_arrays(cooking_vectors):
    """Its codes and graph arrays get their final capacity before the first vector: a regrowth would hold
    the old and the new buffer at once, a transient second copy of the shard's graph (and vectors)."""
    import faiss

    from xmc.mining import ann

    _, labels = cooking_vectors
    vectors = np.tile(labels, (30, 1)) + np.float32(0.01) * np.random.default_rng(0).standard_normal(
        (30 * len(labels), labels.shape[1]), dtype=np.float32)  # 22K vectors: many levels' worth of nodes
    index = faiss.IndexHNSWFlat(labels.shape[1], 16, faiss.METRIC_INNER_PRODUCT)
    ann._reserve_hnsw(index, len(vectors), labels.shape[1], 16)
    hnsw, codes = index.hnsw, faiss.downcast_index(index.storage).codes

    def buffers() -> tuple[int, ...]:
        return tuple(int(array.data()) for array in (hnsw.neighbors, hnsw.levels, hnsw.offsets, codes))

    before = buffers()
    for start in range(0, len(vectors), 1000):
        index.add(vectors[start:start + 1000])
    assert buffers() == before and index.ntotal == len(vectors)
    unreserved = faiss.IndexHNSWFlat(labels.shape[1], 16, faiss.METRIC_INNER_PRODUCT)
    hnsw, codes = unreserved.hnsw, faiss.downcast_index(unreserved.storage).codes
    unreserved.add(vectors[:1000])
    before = buffers()
    unreserved.add(vectors[1000:5000])
    assert buffers() != before  # what the reservation prevents: the test can tell


def test_stacked_sources_answer_positions_across_them(cooking_vectors):
    from xmc.mining.ann import VectorSource, stacked

    _, labels = cooking_vectors
    both = stacked(VectorSource.of(labels[:700]), VectorSource.of(labels[700:]))
    positions = np.array([735, 3, 699, 700, 0])
    assert both.count == len(labels) and both.dim == labels.shape[1]
    np.testing.assert_array_equal(both.fetch(positions), labels[positions])
