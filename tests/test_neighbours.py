"""The query-neighbour channel: softmax weights over a query's nearest training queries, the summed weight of
the neighbours tagged with each candidate label, a memory that saves and loads, and the re-ranking."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from xmc.data.dataset import PreparedDataset
from xmc.data.tokens import load_tokenizer, tokenize_texts
from xmc.mining.config import AnnConfig
from xmc.models.encoder import TextEncoder, encode_tokens, normalized, resolve_model_dir
from xmc.scoring.fusion import rerank
from xmc.scoring.neighbours import NeighbourMemory, candidate_scores, neighbour_weights


@pytest.fixture(scope="module")
def cooking_memory(cooking_prepared) -> tuple[np.ndarray, sp.csr_matrix, np.ndarray, sp.csr_matrix]:
    """Zero-shot embeddings and label rows of 2,000 cooking training questions and 300 test questions."""
    dataset = PreparedDataset(cooking_prepared)
    encoder = TextEncoder(resolve_model_dir("default")).eval()
    tokenizer = load_tokenizer(encoder.model_dir)

    def embed(texts: list[str]) -> np.ndarray:
        tokens = tokenize_texts(tokenizer, texts, max_len=32)
        return encode_tokens(normalized(encoder), *tokens, batch_size=128)

    return (embed(dataset.texts("train")[:2000]), dataset.label_matrix("train")[:2000].tocsr(),
            embed(dataset.texts("test")[:300]), dataset.label_matrix("test")[:300].tocsr())


def test_weights_are_a_softmax_of_the_cosines_and_missing_neighbours_weigh_nothing():
    similarities = np.array([[0.9, 0.8, -np.inf], [-np.inf, -np.inf, -np.inf]])
    weights = neighbour_weights(similarities, temperature=0.1)
    assert weights[0, :2] == pytest.approx([1 / (1 + np.exp(-1)), np.exp(-1) / (1 + np.exp(-1))], rel=1e-5)
    assert weights[0, 2] == 0 and weights[1].tolist() == [0, 0, 0]
    # a low temperature puts the weight on the nearest neighbour
    assert neighbour_weights(similarities, 0.001)[0, 0] == pytest.approx(1.0)


def test_a_label_scores_the_summed_weight_of_the_neighbours_tagged_with_it():
    labels = sp.csr_matrix(np.array([[1, 0, 1, 0], [0, 1, 1, 0], [0, 0, 0, 1]], dtype=np.float32))
    weights = np.array([[0.5, 0.3, 0.2], [1.0, 0.0, 0.0]], dtype=np.float32)
    rows = np.array([[0, 1, 2], [2, -1, -1]])
    candidates = np.array([[2, 0, 1, 3, -1], [3, 0, -1, -1, -1]])
    scores = candidate_scores(weights, rows, labels, candidates)
    np.testing.assert_allclose(scores, [[0.8, 0.5, 0.3, 0.2, 0.0], [1.0, 0.0, 0.0, 0.0, 0.0]], rtol=1e-6)


def test_a_training_query_finds_itself_and_its_own_labels(cooking_memory, tmp_path):
    train, train_labels, _, _ = cooking_memory
    memory = NeighbourMemory.build(train * 3.0, train_labels, AnnConfig(kind="flat"))  # made unit in there
    own = memory.scores(train[:50], np.tile(np.arange(736), (50, 1)), neighbours=1, temperature=0.05)
    # exact duplicate questions may be found instead of themselves: then their labels, not these
    found = np.array([np.array_equal(own[i] > 0, train_labels[i].toarray().ravel() > 0) for i in range(50)])
    assert found.mean() >= 0.95 and np.all((own == 0) | (own == 1))
    memory.save(tmp_path / "neighbours")
    loaded = NeighbourMemory.load(tmp_path / "neighbours")
    assert loaded.size == 2000 and (loaded.labels != memory.labels).nnz == 0
    np.testing.assert_array_equal(loaded.scores(train[:50], np.tile(np.arange(736), (50, 1)), 1, 0.05), own)


def test_neighbour_scores_of_test_questions_put_their_tags_first_more_often_than_chance(cooking_memory):
    """On real questions the channel carries signal: the tag its neighbours agree on most is a true tag of the
    test question far more often than the most frequent tag is."""
    train, train_labels, test, test_labels = cooking_memory
    memory = NeighbourMemory.build(train, train_labels)
    every_tag = np.tile(np.arange(736), (len(test), 1))
    scores = memory.scores(test, every_tag, neighbours=20, temperature=0.05)
    # each neighbour spreads its weight over its tags (at least one), and no tag gets more than all of it
    assert scores.sum(axis=1).min() >= 1 - 1e-5 and scores.max() <= 1 + 1e-5
    top = scores.argmax(axis=1)
    hit = np.asarray(test_labels[np.arange(len(test)), top]).ravel() > 0
    most_frequent = np.asarray(train_labels.sum(axis=0)).ravel().argmax()
    baseline = np.asarray(test_labels[:, most_frequent].todense()).ravel() > 0
    assert hit.mean() > 0.4 and hit.mean() > 2 * baseline.mean(), (hit.mean(), baseline.mean())


def test_rerank_adds_the_weighted_channel_and_keeps_empty_slots_last():
    indices = np.array([[3, 1, -1]])
    scores = np.array([[0.9, 0.8, 0.0]], dtype=np.float32)
    extra = np.array([[0.0, 0.5, 0.0]], dtype=np.float32)
    assert rerank(indices, scores, extra, 0.0)[0].tolist() == [[3, 1, -1]]
    order, combined = rerank(indices, scores, extra, 0.5)
    assert order.tolist() == [[1, 3, -1]] and combined[0, :2] == pytest.approx([1.05, 0.9])


# ------------------------------------------------------------------------------------------------------------
# the channel through calibration, export, the bundle's Predictor and evaluation


@pytest.fixture(scope="module")
def held_out_run(small_cooking, tmp_path_factory):
    """Three steps of the demo recipe on 256 real cooking questions, 64 of them held out for validation,
    trained in this process into a run directory (no Ray), and the restored run."""
    from xmc.config import load_config
    from xmc.experiment import ExperimentConfig
    from xmc.scoring.run import TrainedRun
    from xmc.training.driver import resolve_run, write_run_config
    from xmc.training.session import Session
    from xmc.training.trainer import Trainer

    from conftest import REPO

    config = load_config(ExperimentConfig, REPO / "configs" / "demo.yaml", [
        "train.num_workers=0", f"dataset.prepared={small_cooking}", "dataset.max_len=16",
        "dataset.validation_fraction=0.25", "train.batch_size=64", "train.epochs=1",
        "train.max_steps_per_epoch=3", "train.progress=false", "eval.top_k=10",
        f"run.storage={tmp_path_factory.mktemp('runs')}"])
    config, run_dir = resolve_run(config, "neighbours")
    write_run_config(config, run_dir)
    Trainer(config, run_dir, Session(run_dir)).fit()
    return TrainedRun.open(run_dir)


def brute_force_ranking(run, texts: list[str], weight: float, k: int) -> np.ndarray:
    """The channel's ranking computed densely from its definition: every label's fused score, the top
    ``neighbour_candidates`` of them plus ``weight`` times the softmax weight of the 20 training queries (of
    those the run trained on) nearest by DE cosine that are tagged with the label."""
    scoring = run.scoring_model(device="cpu")
    heads, d = scoring.heads, scoring.de_dim
    fused = scoring.query_vectors(texts) @ scoring.label_vectors().T
    ids, lengths = run.token_cache().arrays("train")
    rows = run.split.train_rows
    memory = scoring.query_head_vectors((ids[rows], lengths[rows]))[:, :d]
    memory /= np.linalg.norm(memory, axis=1, keepdims=True)
    queries = scoring.query_head_vectors(texts)[:, :d]
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    similarity = queries @ memory.T
    nearest = np.argsort(-similarity, axis=1)[:, :heads.neighbours]
    logits = np.take_along_axis(similarity, nearest, axis=1) / heads.neighbour_temperature
    softmax = np.exp(logits - logits.max(axis=1, keepdims=True))
    softmax /= softmax.sum(axis=1, keepdims=True)
    tagged = run.dataset.label_matrix("train")[rows].toarray() > 0
    channel = np.einsum("nk,nkl->nl", softmax, tagged[nearest])
    top = np.argsort(-fused, axis=1)[:, :heads.neighbour_candidates]
    combined = np.take_along_axis(fused + weight * channel, top, axis=1)
    return np.take_along_axis(top, np.argsort(-combined, axis=1), axis=1)[:, :k]


def test_an_exported_channel_ranks_by_its_definition_and_as_evaluation_does(held_out_run, tmp_path):
    from xmc.evaluation.evaluator import evaluate_model
    from xmc.index.config import ExportConfig
    from xmc.index.export import export_run
    from xmc.index.predictor import Predictor
    from xmc.scoring.neighbours import training_memory

    run = held_out_run
    export_run(run.location, tmp_path / "bundle", ExportConfig(shards=2, neighbour_weight=0.5,
                                                               calibration="off"))
    predictor = Predictor.from_bundle(tmp_path / "bundle")
    manifest = predictor.bundle.manifest
    assert manifest["neighbours"]["queries"] == len(run.split.train_rows) == 192  # the hold-out stays out
    assert manifest["query"]["heads"]["neighbour_weight"] == 0.5 and "re-ranked" in manifest["score"]
    assert predictor.search_depth(5) == 100
    texts = run.dataset.texts("test")
    ids, _ = predictor.topk(texts, 10)
    expected = brute_force_ranking(run, texts, 0.5, 10)
    assert (ids == expected).mean() > 0.98  # a tie may fall either way
    # the channel changes the ranking (else this test could not tell it from the plain fused score)
    assert (brute_force_ranking(run, texts, 0.0, 10)[:, 0] != expected[:, 0]).any()

    scoring = run.scoring_model(device="cpu")
    scoring.heads.neighbour_weight = 0.5
    memory = training_memory(scoring, run.token_cache().arrays("train"), run.split.train_rows,
                             run.dataset.label_matrix("train"))
    _, (evaluated, _) = evaluate_model(scoring, run.dataset, run.token_cache().arrays("test"), "test", None,
                                       run.config.eval, run.config.dataset, run.split.propensity_rows,
                                       neighbours=memory)
    assert (evaluated == ids).mean() > 0.98


def test_calibration_chooses_the_channel_weight_on_the_hold_out(held_out_run):
    from xmc.evaluation.calibration import calibrate_run
    from xmc.evaluation.config import CalibrateConfig

    record = calibrate_run(held_out_run.location, CalibrateConfig(neighbour_weights=[0.0, 0.5, 2.0],
                                                                  de_weights=[1.0], cold_start_offsets=[0.0]))
    grid = record["neighbour_grid"]
    assert [row["neighbour_weight"] for row in grid] == [0.0, 0.5, 2.0]
    # weight 0 is the best point of the first grid, unchanged
    first = max(record["grid"], key=lambda row: row["P@1"])
    assert {key: grid[0][key] for key in ("P@1", "P@5", "PSP@1")} == \
        {key: first[key] for key in ("P@1", "P@5", "PSP@1")}
    best = max(grid, key=lambda row: row["P@1"])
    assert record["selected"]["neighbour_weight"] == best["neighbour_weight"]
    assert record["validation"]["P@1"] == best["P@1"]
    assert len({row["P@5"] for row in grid}) > 1  # the weights rank differently
