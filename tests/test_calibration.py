"""Fused-score calibration on a real wordnet subset, where most held-out positives are cold-start labels:
the folded label/query vectors compute the documented score, jobs/calibrate.py chooses on the validation
hold-out only, and an exported bundle ranks exactly like the chosen grid point."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from xmc.config import load_config
from xmc.data.prepare import prepare_dataset
from xmc.evaluation import calibration
from xmc.experiment import ExperimentConfig
from xmc.scoring import fusion

from conftest import REPO, read_lines, run_job, shared_set, write_lines

pytestmark = pytest.mark.integration

N_TRAIN, N_TEST = 1000, 200
OFFSETS = [0.0, 0.1, 0.3]


def write_label_subset(source: Path, dest: Path, n_train: int, n_test: int) -> Path:
    """The first points of a real LF set with only the labels they use, renumbered in label-file order (the
    147,306 wordnet labels would make every encoding pass minutes long)."""
    train = [json.loads(line) for line in read_lines(source / "trn.json.gz")[:n_train]]
    test = [json.loads(line) for line in read_lines(source / "tst.json.gz")[:n_test]]
    used = sorted({label for point in train + test for label in point["target_ind"]})
    new_id = {old: new for new, old in enumerate(used)}
    labels = read_lines(source / "lbl.json.gz")
    write_lines(dest / "lbl.json.gz", [labels[old] for old in used])
    for name, points in (("trn.json.gz", train), ("tst.json.gz", test)):
        for point in points:
            point["target_ind"] = [new_id[label] for label in point["target_ind"]]
        write_lines(dest / name, [json.dumps(point) for point in points])
    return dest


@pytest.fixture(scope="module")
def wordnet_run(tmp_path_factory, ray_session) -> Path:
    """One epoch on one Ray Train worker on 800 wordnet points, 200 more held out for validation."""
    from xmc.training.driver import run_training

    root = tmp_path_factory.mktemp("wordnet-subset")
    source = write_label_subset(shared_set("wordnet-reverse-dictionary"), root / "source", N_TRAIN, N_TEST)
    prepare_dataset(source, root / "prepared")
    values = {"dataset.source": root / "source", "dataset.prepared": root / "prepared",
              "dataset.validation_fraction": 0.2, "train.epochs": 1, "train.batch_size": 64,
              "train.num_workers": 1, "train.progress": False, "pool.max_size": 512,
              "run.storage": root / "runs", "run.name": "calibrated"}
    config = load_config(ExperimentConfig, REPO / "configs" / "wordnet.yaml",
                         [f"{k}={v}" for k, v in values.items()])
    _, run_dir = run_training(config)
    return Path(run_dir)


@pytest.fixture(scope="module")
def trained(wordnet_run):
    """The run's last checkpoint for inference, and the run it comes from."""
    from xmc.scoring.run import TrainedRun

    run = TrainedRun.open(wordnet_run)
    return run, run.scoring_model()


@pytest.fixture(scope="module")
def calibrated(wordnet_run) -> dict:
    proc = run_job("calibrate.py", "--run", str(wordnet_run), "--set", f"cold_start_offsets={OFFSETS}")
    assert "selected by validation P@1" in proc.stdout
    return json.loads((wordnet_run / "calibration.json").read_text())


def test_folded_vectors_compute_the_calibrated_score(trained):
    """[w·DE ; CLF ; b·cold] · [q_DE ; q_CLF ; 1] = w·cos_DE + cos_CLF + b·[cold], on the model's real
    vectors."""
    run, scoring = trained
    queries = scoring.query_head_vectors(run.token_cache().arrays("train"), run.split.validation_rows[:50])
    heads = scoring.head_vectors()
    cold = scoring.cold_start
    assert 0 < len(cold) < scoring.num_labels
    d = scoring.de_dim
    folded = fusion.fold_queries(queries, 0.2) @ fusion.fold_labels(heads.de, heads.clf, cold, 0.5, 0.2).T
    expected = 0.5 * queries[:, :d] @ heads.de.T + queries[:, d:] @ heads.clf.T
    expected[:, cold] += 0.2
    np.testing.assert_allclose(folded, expected, atol=1e-5)
    # no offset: the plain [DE ; CLF] layout of every earlier bundle, no extra column on either side
    assert fusion.fold_labels(heads.de, heads.clf, cold, 1.0, 0.0).shape[1] == 2 * d
    assert fusion.fold_queries(queries, 0.0).shape[1] == 2 * d


def test_grid_search_agrees_with_a_search_of_the_folded_vectors(trained):
    """The grid recombines per-head score matrices; each point must rank as an exact search of its folded
    label vectors does (the vectors evaluation, export and Serve use)."""
    from xmc.evaluation.config import EvalConfig
    from xmc.evaluation.retrieval import predict_topk

    run, scoring = trained
    queries = scoring.query_head_vectors(run.token_cache().arrays("train"), run.split.validation_rows)
    assert scoring.heads.clf_untrained == "table"
    heads = scoring.head_vectors()
    labels_de, table = heads.de, heads.clf
    text = scoring.untrained_text_vectors()
    cold = scoring.cold_start
    grid = calibration.make_grid([0.5, 1.0], [0.0, 0.2], ["table", "label_text"])
    d = scoring.de_dim
    found = calibration.grid_topk(queries[:, :d], queries[:, d:], labels_de, table, text, cold, grid, k=5)
    for point, (indices, scores) in zip(grid, found):
        clf = table.copy()
        if point.clf_untrained == "label_text":
            clf[cold] = text
        expected, expected_scores = predict_topk(
            fusion.fold_queries(queries, point.cold_start_offset),
            fusion.fold_labels(labels_de, clf, cold, point.de_weight, point.cold_start_offset),
            EvalConfig(top_k=5))
        np.testing.assert_allclose(scores, expected_scores, atol=1e-4)
        assert (indices[:, 0] == expected[:, 0]).mean() >= 0.99, point


def test_calibration_chooses_on_validation_and_export_ranks_as_chosen(wordnet_run, calibrated, trained,
                                                                      tmp_path):
    import faiss

    from xmc.evaluation.evaluator import evaluate_predictions
    from xmc.index.bundle import shard_dir
    from xmc.index.predictor import Predictor

    run, scoring = trained
    grid = calibrated["grid"]
    assert len(grid) == 5 * len(OFFSETS) * 2
    best = max(grid, key=lambda row: row["P@1"])
    assert calibrated["validation"]["P@1"] == best["P@1"]
    assert calibrated["checkpoint"].startswith("checkpoint_epoch001")
    # on wordnet most held-out positives are words with no training definition: the offset has work to do
    assert calibrated["validation_positives_on_cold_start_labels"] > 0.4
    assert calibrated["cold_start_labels"] == len(scoring.cold_start)
    # raising the offset can only move cold-start labels up: more queries get one first, and the largest
    # offset makes it most of them
    for weight in (0.0, 1.0):
        for rule in ("table", "label_text"):
            first = [next(r["top1_cold_start"] for r in grid if (r["de_weight"], r["cold_start_offset"],
                                                                 r["clf_untrained"]) == (weight, b, rule))
                     for b in OFFSETS]
            assert first == sorted(first) and first[-1] > first[0], (weight, rule, first)

    run_job("export.py", "--run", str(wordnet_run), "--out", str(tmp_path / "bundle"),
            "--set", "ann.kind=flat")
    predictor = Predictor.from_bundle(tmp_path / "bundle")
    heads = predictor.bundle.manifest["query"]["heads"]
    chosen = calibrated["selected"]
    assert {key: heads[key] for key in chosen} == chosen
    d = scoring.de_dim
    offset_column = chosen["cold_start_offset"] != 0
    assert predictor.bundle.manifest["counts"]["dim"] == 2 * d + offset_column
    if offset_column:
        index = faiss.read_index(str(tmp_path / "bundle" / shard_dir(0) / "index.faiss"))
        column = index.reconstruct_n(0, index.ntotal)[:, -1]
        expected = np.zeros(scoring.num_labels, np.float32)
        expected[scoring.cold_start] = chosen["cold_start_offset"]
        np.testing.assert_allclose(column, expected)

    # the bundle, fed the raw held-out texts, scores what calibration measured for its choice
    rows = run.split.validation_rows
    train_texts = run.dataset.texts("train", run.config.dataset.query_text)
    indices, scores = predictor.topk([train_texts[row] for row in rows], 10)
    metrics = evaluate_predictions(run.dataset, indices, scores, 0.55, 1.5, split="train", rows=rows,
                                   train_rows=run.split.train_rows)
    assert abs(metrics["P@1"] - calibrated["validation"]["P@1"]) <= 100 / len(rows) + 1e-6


def test_calibrating_needs_a_hold_out_and_export_refuses_a_stale_choice(wordnet_run, calibrated, tmp_path):
    from xmc.config import ConfigError
    from xmc.index.config import ExportConfig
    from xmc.index.export import export_run

    no_hold_out = tmp_path / "no-hold-out"
    no_hold_out.mkdir()
    config = (wordnet_run / "config.yaml").read_text().replace("validation_fraction: 0.2",
                                                               "validation_fraction: 0.0")
    (no_hold_out / "config.yaml").write_text(config)
    checkpoint = next(wordnet_run.glob("checkpoint_epoch001_*"))
    (no_hold_out / checkpoint.name).symlink_to(checkpoint, target_is_directory=True)
    proc = run_job("calibrate.py", "--run", str(no_hold_out), check=False)
    assert proc.returncode == 2 and "no validation hold-out" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_job("calibrate.py", "--run", str(wordnet_run), "--set", "metric=P@7", check=False)
    assert proc.returncode == 2 and "'P@7' is not one of" in proc.stderr and "Traceback" not in proc.stderr

    record = {**calibrated, "checkpoint": "checkpoint_epoch009_step0000001"}
    stale = tmp_path / "stale"
    stale.mkdir()
    (stale / "config.yaml").write_text((wordnet_run / "config.yaml").read_text())
    (stale / checkpoint.name).symlink_to(checkpoint, target_is_directory=True)
    (stale / "calibration.json").write_text(json.dumps(record))
    with pytest.raises(ConfigError, match="chosen for checkpoint_epoch009"):
        export_run(stale, tmp_path / "bundle", ExportConfig())
