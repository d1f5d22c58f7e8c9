"""jobs/evaluate.py: the zero-shot baseline on real data, scoring a prediction file, and its errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from xmc.evaluation.metrics import REPORTED_METRICS

from conftest import REPO, run_job

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def zero_shot_run(tmp_path_factory, cooking_prepared):
    out = tmp_path_factory.mktemp("zero-shot")
    run_job("evaluate.py", "--data", str(cooking_prepared), "--encoder", "default", "--out", str(out),
            "--config", str(REPO / "configs/datasets/cooking-stackexchange.yaml"), "--quiet")
    return out


def test_zero_shot_on_cooking_reproduces_the_baseline(zero_shot_run):
    metrics = json.loads((zero_shot_run / "metrics.json").read_text())
    assert list(metrics) == [*REPORTED_METRICS, "R@100"]
    assert metrics["P@1"] == pytest.approx(56.7, abs=0.3)  # the reference zero-shot figure for max_len 48
    assert metrics["P@1"] >= metrics["P@3"] >= metrics["P@5"]
    assert metrics["R@10"] < metrics["R@100"] <= 100.0
    with np.load(zero_shot_run / "PRED.npz") as pred:
        assert pred["indices"].shape == (3000, 100) and pred["indices"].dtype == np.int64
        assert pred["scores"].dtype == np.float32
        assert (np.diff(pred["scores"], axis=1) <= 1e-6).all()  # sorted by score


def test_scoring_a_prediction_file_gives_the_same_metrics(zero_shot_run, cooking_prepared, tmp_path):
    out = tmp_path / "metrics.json"
    run_job("evaluate.py", "--data", str(cooking_prepared), "--predictions", str(zero_shot_run / "PRED.npz"),
            "--out", str(out), "--config", str(REPO / "configs/datasets/cooking-stackexchange.yaml"))
    assert json.loads(out.read_text()) == json.loads((zero_shot_run / "metrics.json").read_text())


def test_propensity_constants_come_from_the_config(zero_shot_run, cooking_prepared):
    base = run_job("evaluate.py", "--data", str(cooking_prepared), "--predictions",
                   str(zero_shot_run / "PRED.npz"))
    amazon = run_job("evaluate.py", "--data", str(cooking_prepared), "--predictions",
                     str(zero_shot_run / "PRED.npz"), "--set", "dataset.propensity_a=0.6",
                     "--set", "dataset.propensity_b=2.6")
    first, second = json.loads(base.stdout), json.loads(amazon.stdout)
    assert first["P@1"] == second["P@1"] and first["PSP@1"] != second["PSP@1"]


@pytest.mark.parametrize("indices, scores, expected", [
    (np.zeros((2999, 5), np.int64), np.zeros((2999, 5), np.float32), "2999 rows but the test split has 3000"),
    (np.full((3000, 5), 736, np.int64), np.zeros((3000, 5), np.float32),
     "indices[0, 0] = 736 is not a label id"),
    (np.zeros((3000, 5), np.int64), np.zeros((3000, 4), np.float32), "must be 2-D arrays of the same shape"),
    (np.zeros((3000, 5), np.float32), np.zeros((3000, 5), np.float32), "expected integers"),
])
def test_bad_prediction_files_are_named(tmp_path, cooking_prepared, indices, scores, expected):
    path = tmp_path / "bad.npz"
    np.savez(path, indices=indices, scores=scores)
    proc = run_job("evaluate.py", "--data", str(cooking_prepared), "--predictions", str(path), check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "bad.npz" in lines[0] and expected in lines[0], proc.stderr


def test_missing_dataset_is_named(tmp_path):
    proc = run_job("evaluate.py", "--data", str(tmp_path / "none"), "--predictions", "x.npz", check=False)
    assert proc.returncode == 2 and "manifest.json: missing or unreadable" in proc.stderr


def test_the_validation_hold_out_with_metrics_per_label_segment(cooking_prepared, tiny_encoder, tmp_path):
    from xmc.config import load_config
    from xmc.data.dataset import PreparedDataset
    from xmc.data.split import TrainingSplit
    from xmc.experiment import ExperimentConfig

    settings = ["--config", str(REPO / "configs/datasets/cooking-stackexchange.yaml"), "--set",
                "dataset.validation_fraction=0.1", "--set", "dataset.max_len=16"]
    run_job("evaluate.py", "--data", str(cooking_prepared), "--encoder", str(tiny_encoder), "--out",
            str(tmp_path / "val"), "--split", "validation", "--segments", "--quiet", *settings)
    metrics = json.loads((tmp_path / "val" / "metrics.json").read_text())
    config = load_config(ExperimentConfig, REPO / "configs/datasets/cooking-stackexchange.yaml",
                         ["dataset.validation_fraction=0.1"])
    held_out = TrainingSplit.of(PreparedDataset(cooking_prepared), config.dataset).validation_rows
    with np.load(tmp_path / "val" / "PRED.npz") as pred:
        assert len(pred["indices"]) == len(held_out)  # one row per held-out training point
    segments = metrics["segments"]
    assert set(segments) == {"seen", "unseen", "head", "tail"}
    assert segments["seen"]["labels"] + segments["unseen"]["labels"] == 736
    assert segments["head"]["labels"] + segments["tail"]["labels"] == segments["seen"]["labels"]
    assert segments["head"]["positives_share"] + segments["tail"]["positives_share"] == pytest.approx(
        segments["seen"]["positives_share"], abs=0.02)
    assert segments["head"]["points"] <= len(held_out) and 0 <= segments["head"]["P@1"] <= 100

    proc = run_job("evaluate.py", "--data", str(cooking_prepared), "--predictions",
                   str(tmp_path / "val" / "PRED.npz"), "--split", "validation", check=False)
    assert proc.returncode == 2 and "dataset.validation_fraction" in proc.stderr  # no hold-out configured
