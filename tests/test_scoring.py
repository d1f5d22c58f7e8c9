"""The scoring model without a trainer: restored from a checkpoint it scores exactly like the model that was
trained, reading no training state; labels without training positives are scored as configured; the fused
score folds into one inner product; an exported bundle's Predictor ranks like the model."""

from __future__ import annotations

import numpy as np
import pytest

from xmc import Predictor, checkpoint
from xmc.config import load_config
from xmc.experiment import ExperimentConfig
from xmc.index.config import ExportConfig
from xmc.index.export import export_run
from xmc.mining.ann import build_index, search
from xmc.mining.config import AnnConfig
from xmc.scoring import fusion
from xmc.scoring.model import ScoringModel
from xmc.scoring.run import TrainedRun
from xmc.training.driver import resolve_run, write_run_config
from xmc.training.session import Session
from xmc.training.trainer import Trainer

from conftest import REPO


@pytest.fixture(scope="module")
def trained(small_cooking, tmp_path_factory) -> Trainer:
    """Three steps of the demo recipe on 256 real cooking questions, trained in this process (no Ray) into a
    run directory laid out as jobs/train.py lays it out (config.yaml and checkpoint_* directories)."""
    config = load_config(ExperimentConfig, REPO / "configs" / "demo.yaml", [
        "train.num_workers=0", f"dataset.prepared={small_cooking}", "dataset.max_len=16",
        "train.batch_size=64", "train.epochs=1", "train.max_steps_per_epoch=3", "train.progress=false",
        "eval.top_k=10",
        f"run.storage={tmp_path_factory.mktemp('runs')}"])
    config, run_dir = resolve_run(config, "scoring")
    write_run_config(config, run_dir)
    trainer = Trainer(config, run_dir, Session(run_dir))
    trainer.fit()
    trainer.scoring.model.eval()
    return trainer


@pytest.fixture(scope="module")
def restored(trained, monkeypatch_module):
    """The run's checkpoint, loaded for inference; records which checkpoint parts it read (whole parts, and
    the sharded parts whose rows it read, with the keys)."""
    read = []
    load_state, read_rows = checkpoint.load_state, checkpoint.read_rows

    def recording(directory, name):
        read.append(name)
        return load_state(directory, name)

    def recording_rows(directory, part, keys, *args, **kwargs):
        read.append((part, keys))
        return read_rows(directory, part, keys, *args, **kwargs)

    monkeypatch_module.setattr(checkpoint, "load_state", recording)
    monkeypatch_module.setattr(checkpoint, "read_rows", recording_rows)
    run = TrainedRun.open(trained.reporter.location)
    scoring = run.scoring_model(device="cpu")
    return run, scoring, read


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_a_checkpoint_scores_like_the_trained_model_without_training_state(trained, restored):
    run, scoring, read = restored
    assert run.checkpoint_name == run.checkpoint.name == "checkpoint_epoch001_step0000003"
    # the weights and the table's rows, never the optimizer moments, the optimizer or the loop state
    assert {"optimizer", "trainer"}.isdisjoint(read) and "model" in read and ("table", ("weight",)) in read
    assert np.array_equal(scoring.cold_start, trained.data.cold_start) and len(scoring.cold_start) > 0
    before, after = trained.scoring.head_vectors(), scoring.head_vectors()
    np.testing.assert_allclose(after.de, before.de, atol=1e-6)
    np.testing.assert_allclose(after.clf, before.clf, atol=1e-6)
    tokens = trained.data.cache.arrays("test")
    np.testing.assert_allclose(scoring.query_vectors(tokens), trained.scoring.query_vectors(tokens),
                               atol=1e-6)
    # raw texts are tokenised like the token cache
    texts = run.dataset.texts("test")[:20]
    np.testing.assert_allclose(scoring.query_vectors(texts), scoring.query_vectors(tokens, np.arange(20)),
                               atol=1e-6)


def test_labels_without_training_positives_are_scored_by_their_text_when_asked(restored):
    """Such a label's table row never got a positive update, only pushes away as a negative; ``clf_untrained:
    label_text`` scores it by its text through the trained classifier head instead."""
    run, scoring, _ = restored
    cold = scoring.cold_start
    counts = run.dataset.train_label_counts(run.split.train_rows)
    assert np.array_equal(cold, np.flatnonzero(counts == 0))
    trained = np.flatnonzero(counts > 0)
    table = scoring.classifier.full_normalized().numpy()
    scoring.heads.clf_untrained = "table"
    assert np.array_equal(scoring.classifier_vectors(), table)
    scoring.heads.clf_untrained = "label_text"
    try:
        clf = scoring.classifier_vectors()
    finally:
        scoring.heads.clf_untrained = "table"
    text = scoring.untrained_text_vectors()
    assert np.array_equal(clf[trained], table[trained])
    np.testing.assert_allclose(clf[cold], text, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(clf, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(table[cold], text, atol=1e-3)  # training moved those rows away from the text


def test_the_folded_vectors_compute_the_fused_score():
    """[w·DE ; CLF ; b·cold] · [q_DE ; q_CLF ; 1] = w·cos_DE + cos_CLF + b·[cold]; without an offset there
    is no extra column."""
    rng = np.random.default_rng(0)
    de, clf = rng.normal(size=(30, 4)).astype(np.float32), rng.normal(size=(30, 3)).astype(np.float32)
    queries = rng.normal(size=(5, 7)).astype(np.float32)
    cold = np.array([2, 11, 29])
    folded = fusion.fold_queries(queries, 0.2) @ fusion.fold_labels(de, clf, cold, 0.5, 0.2).T
    expected = 0.5 * queries[:, :4] @ de.T + queries[:, 4:] @ clf.T
    expected[:, cold] += 0.2
    np.testing.assert_allclose(folded, expected, atol=1e-5)
    assert fusion.fold_labels(de, clf, cold, 1.0, 0.0).shape == (30, 7)
    assert fusion.fold_queries(queries, 0.0).shape == (5, 7)


def test_an_exported_bundle_answers_like_the_model(trained, restored, tmp_path):
    run, scoring, _ = restored
    bundle = export_run(run.location, tmp_path / "bundle",
                        ExportConfig(shards=2, ann=AnnConfig(kind="flat")))
    predictor = Predictor.from_bundle(bundle)
    assert predictor.version.startswith(f"{run.name}-epoch001_step0000003-")
    texts = run.dataset.texts("test")
    ids, scores = predictor.topk(texts, 5)
    # the same ranking as an exact search of the model's own folded vectors
    expected_scores, expected_ids = search(build_index(scoring.label_vectors(), AnnConfig(kind="flat")),
                                           scoring.query_vectors(texts), 5)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-4)
    assert (ids[:, 0] == expected_ids[:, 0]).mean() >= 0.98

    answers = predictor.predict(texts[:3], k=4)
    uids, labels = run.dataset.uids("labels"), run.dataset.texts("labels")
    assert [len(row) for row in answers] == [4, 4, 4]
    for row, row_ids in zip(answers, ids[:3]):
        assert [hit.id for hit in row] == row_ids[:4].tolist()
        assert [(hit.uid, hit.label) for hit in row] == [(str(uids[i]), labels[i]) for i in row_ids[:4]]
        assert [hit.score for hit in row] == sorted((hit.score for hit in row), reverse=True)
    assert predictor.predict([], k=3) == []
    with pytest.raises(TypeError, match="list of texts"):
        predictor.predict("how do I keep pasta from sticking")
    search_only = Predictor.from_bundle(bundle, encoder=False, labels=False, shards=[1])
    with pytest.raises(ValueError, match="without its query tower"):
        search_only.encode(["salt"])
    shard_ids = search_only.search(predictor.encode(texts[:8]), 3)[1]
    # shard 1 of 2 holds the labels with odd ids, as worker 1 of 2 training workers does
    assert predictor.bundle.manifest["shards"][1]["label_rule"] == "id % 2 == 1"
    assert (shard_ids % 2 == 1).all()


def test_an_export_may_choose_how_labels_without_training_data_are_scored(restored, tmp_path):
    """No retraining: the bundle's label vectors are [DE ; CLF] with the chosen rule on the CLF side."""
    import faiss

    run, scoring, _ = restored
    bundle = export_run(run.location, tmp_path / "bundle",
                        ExportConfig(clf_untrained="label_text", ann=AnnConfig(kind="flat")))
    assert (Predictor.from_bundle(bundle, encoder=False).bundle.manifest["query"]["heads"]["clf_untrained"]
            == "label_text")
    index = faiss.read_index(str(tmp_path / "bundle" / "shards" / "00000" / "index.faiss"))
    vectors = index.reconstruct_n(0, index.ntotal)
    d = scoring.de_dim
    table = scoring.classifier.full_normalized().numpy()
    cold = scoring.cold_start
    np.testing.assert_allclose(vectors[cold, d:], scoring.untrained_text_vectors(), atol=1e-5)
    np.testing.assert_allclose(np.delete(vectors[:, d:], cold, axis=0), np.delete(table, cold, axis=0),
                               atol=1e-6)


def test_label_vectors_of_a_subset_of_labels_are_those_rows_of_all(restored):
    """What an index shard of some labels holds: the same rows as the full matrix, cold-start offsets and
    text-scored classifier rows included."""
    _, scoring, _ = restored
    heads = scoring.heads
    heads.clf_untrained, heads.cold_start_offset, heads.de_weight = "label_text", 0.25, 0.5
    try:
        everything = scoring.label_vectors()
        rows = np.sort(np.random.default_rng(0).choice(scoring.num_labels, 60, replace=False))
        rows = np.union1d(rows, scoring.cold_start[:3])
        assert len(np.intersect1d(rows, scoring.cold_start)) >= 1
        np.testing.assert_allclose(scoring.label_vectors(rows), everything[rows], atol=1e-5)
        assert everything.shape[1] == scoring.dim == 2 * scoring.de_dim + 1
        assert set(np.unique(everything[:, -1])) == {0.0, 0.25}
    finally:
        heads.clf_untrained, heads.cold_start_offset, heads.de_weight = "table", 0.0, 1.0


def test_the_labels_one_worker_of_two_holds_are_those_rows_of_all(trained, restored):
    """What a worker indexes in sharded mining and evaluation: the vectors of its own labels (every second
    one for worker 1 of 2) equal those rows of the one-worker matrix, from its own table rows."""
    run, scoring, _ = restored
    second = ScoringModel.from_checkpoint(run.checkpoint, run.config, scoring.num_labels, rank=1,
                                          world_size=2, label_tokens=scoring.label_tokens, device="cpu")
    for model in (scoring, second):
        model.heads.clf_untrained, model.heads.cold_start_offset = "label_text", 0.25
    try:
        own = second.own_labels
        assert np.array_equal(own, np.arange(1, scoring.num_labels, 2))
        assert len(second.classifier.owned) == len(own)  # it holds half of the table
        assert len(np.intersect1d(own, scoring.cold_start)) >= 1
        np.testing.assert_allclose(second.own_label_vectors(), scoring.label_vectors()[own], atol=1e-5)
        np.testing.assert_array_equal(scoring.own_label_vectors(), scoring.label_vectors())
    finally:
        for model in (scoring, second):
            model.heads.clf_untrained, model.heads.cold_start_offset = "table", 0.0


def test_a_subset_model_holds_only_its_labels_and_scores_them_like_the_whole(restored):
    """What an export worker building one index shard loads: nothing of the label state but its labels'
    tokens (the classifier rows of that shard's labels are read from the checkpoint as its vectors are made),
    and its labels' vectors are those rows of the whole model's."""
    run, scoring, _ = restored
    rows = np.arange(1, scoring.num_labels, 3)
    scoring.heads.clf_untrained, scoring.heads.cold_start_offset = "label_text", 0.25  # run.config.model too
    try:
        subset = run.scoring_model(device="cpu", subset=rows)
        assert subset.heads is scoring.heads and len(np.intersect1d(rows, scoring.cold_start)) >= 1
        assert np.array_equal(subset.own_labels, rows) and subset.classifier.rows.weight.shape[0] == 0
        whole = scoring.label_vectors()[rows]
        np.testing.assert_allclose(subset.own_label_vectors(), whole, atol=1e-5)
        source = subset.own_label_source()  # what the shard's index is built from, a chunk at a time
        np.testing.assert_allclose(source.fetch(np.arange(5, 60)), whole[5:60], atol=1e-5)
        with pytest.raises(ValueError, match="own_classifier_vectors"):
            subset.classifier_vectors()  # every label's rows: not what a subset model has
    finally:
        scoring.heads.clf_untrained, scoring.heads.cold_start_offset = "table", 0.0


def test_a_prime_subset_model_reads_the_free_vectors_of_its_labels_clusters(small_cooking, tiny_encoder,
                                                                            tmp_path):
    """PRIME's prototypes of a subset come from the free vectors of its labels' clusters, read from the
    checkpoint, and the subset's centroids: the same vectors as the whole model's."""
    config = load_config(ExperimentConfig, [REPO / "configs/datasets/cooking-stackexchange.yaml",
                                            REPO / "configs/methods/prime.yaml"],
                         ["train.num_workers=0", f"dataset.prepared={small_cooking}", "dataset.max_len=16",
                          f"encoder.model={tiny_encoder}", f"run.storage={tmp_path}", "train.progress=false"])
    config, run_dir = resolve_run(config, "prime")
    trainer = Trainer(config, run_dir, Session(run_dir))
    trainer.initialise()
    trainer.checkpoints.save(tmp_path / "checkpoint", trainer.state_dict())
    whole = trainer.scoring.label_vectors()
    rows = np.arange(2, trainer.data.num_labels, 5)
    subset = ScoringModel.from_checkpoint(tmp_path / "checkpoint", config, trainer.data.num_labels,
                                          label_tokens=trainer.data.cache.arrays("labels"), subset=rows,
                                          device="cpu")
    free = subset.prototypes.free
    assert np.array_equal(free.owned, np.unique(subset.prototypes.free_of[rows]))
    assert len(free.owned) < free.num_labels and len(subset.prototypes.centroids.owned) == len(rows)
    np.testing.assert_allclose(subset.own_label_vectors(), whole[rows], atol=1e-5)


def test_labels_added_and_removed_after_training(restored, tmp_path):
    """A new bundle version without retraining: removed labels are never returned, an added label is scored
    by its text exactly as a label without training data is under ``label_text``, ids stay put."""
    import json

    from xmc.data.errors import DataError

    run, scoring, _ = restored
    uids, texts = [str(u) for u in run.dataset.uids("labels")], run.dataset.texts("labels")
    queries = run.dataset.texts("test")[:40]
    config = ExportConfig(clf_untrained="label_text", ann=AnnConfig(kind="flat"), shards=2)
    before = Predictor.from_bundle(export_run(run.location, tmp_path / "before", config))
    top_before = before.topk(queries, 1)[0][:, 0]
    removed = np.unique(top_before)[:3]  # labels that were someone's best answer
    (tmp_path / "retired.txt").write_text("".join(f"{uids[i]}\n" for i in removed))
    cold = int(scoring.cold_start[0])
    added = [{"uid": "copy-of-" + uids[cold], "title": texts[cold]},
             {"uid": "brand-new", "title": "smoked paprika", "content": "ignored: labels use the title"}]
    (tmp_path / "new.json").write_text("".join(json.dumps(label) + "\n" for label in added))
    config.add_labels, config.remove_labels = str(tmp_path / "new.json"), str(tmp_path / "retired.txt")
    after = Predictor.from_bundle(export_run(run.location, tmp_path / "after", config))

    num_labels = len(uids)
    assert after.version != before.version
    assert after.bundle.num_labels == num_labels + 2 - 3 and after.bundle.num_label_ids == num_labels + 2
    assert after.bundle.manifest["label_edits"] == {"added": 2, "removed": 3}
    everything = after.bundle.num_labels
    ids, scores = after.topk(queries + [texts[i] for i in removed], everything)
    assert not np.isin(ids, removed).any()  # not even for a query that is the removed label's own text
    assert set(ids[0]) == set(range(num_labels + 2)) - set(removed.tolist())
    # the copy of a label without training data gets its vector, so the same score for every query
    for row_ids, row_scores in zip(ids, scores):
        at = {label: score for label, score in zip(row_ids, row_scores)}
        assert at[num_labels] == pytest.approx(at[cold], abs=1e-5)
    hit = after.predict(["smoked paprika"], k=1)[0][0]
    assert (hit.id, hit.uid, hit.label) == (num_labels + 1, "brand-new", "smoked paprika")
    kept = [hit for hit in after.predict(queries[:5], k=5)[0] if hit.id < num_labels]
    assert all((hit.uid, hit.label) == (uids[hit.id], texts[hit.id]) for hit in kept)  # ids stay put

    (tmp_path / "bad.txt").write_text(f"{uids[0]}\nno-such-label\n")
    config.add_labels, config.remove_labels = "", str(tmp_path / "bad.txt")
    with pytest.raises(DataError, match=r"bad.txt:2: no label with uid 'no-such-label'"):
        export_run(run.location, tmp_path / "never", config)
    (tmp_path / "clash.json").write_text(json.dumps({"uid": uids[5], "title": "x"}) + "\n")
    config.add_labels, config.remove_labels = str(tmp_path / "clash.json"), ""
    with pytest.raises(DataError, match=r"clash.json:1: label .* is already one of the run's labels"):
        export_run(run.location, tmp_path / "never", config)
    assert not (tmp_path / "never").exists()
