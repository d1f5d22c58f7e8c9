"""Settings left to the data: token lengths from two real sets of very different text lengths, a step budget,
and a run from a dataset file of only its source and text fields, whose config.yaml records what was chosen
and why."""

from __future__ import annotations

import json

import pytest
import yaml

from xmc.config import load_config
from xmc.data.dataset import PreparedDataset
from xmc.data.lengths import choose_lengths
from xmc.data.prepare import prepare_dataset
from xmc.experiment import ExperimentConfig
from xmc.models.encoder import resolve_model_dir
from xmc.training.adapt import adapt_to_data

from conftest import REPO, shared_set, write_lf_subset


@pytest.fixture(scope="module")
def small_reuters(tmp_path_factory):
    """400 Reuters newswires (title and body: hundreds of tokens) and all 90 topics."""
    root = tmp_path_factory.mktemp("small-reuters")
    prepare_dataset(write_lf_subset(shared_set("reuters-21578"), root / "source", 400, 50), root / "prepared",
                    allow_empty_text=True)
    return root / "prepared"


def test_lengths_follow_the_texts_of_each_set(small_cooking, small_reuters):
    model_dir = resolve_model_dir("default")
    chosen = {}
    for name, prepared, fields in (("cooking", small_cooking, "title"),
                                   ("reuters", small_reuters, "title+content")):
        config = load_config(ExperimentConfig, None, [f"dataset.query_text={fields}"]).dataset
        chosen[name], reasons = choose_lengths(config, PreparedDataset(prepared), model_dir)
        assert set(reasons) == {"dataset.max_len", "dataset.label_max_len"}
        assert "95th percentile" in reasons["dataset.max_len"] and "99th" in reasons["dataset.label_max_len"]
    # question titles are short; newswires run past the cap, so the cap is what they get
    assert 8 <= chosen["cooking"].max_len <= 40 and chosen["reuters"].max_len == 128
    assert chosen["cooking"].label_max_len <= 16 and chosen["reuters"].label_max_len <= 24
    # what a config sets is kept; labels follow a set max_len, as they always have
    explicit = load_config(ExperimentConfig, None, ["dataset.max_len=48"]).dataset
    assert choose_lengths(explicit, PreparedDataset(small_cooking), model_dir) == (
        load_config(ExperimentConfig, None, ["dataset.max_len=48", "dataset.label_max_len=48"]).dataset, {})


def test_a_step_budget_becomes_the_fewest_epochs_that_reach_it(small_cooking):
    config = load_config(ExperimentConfig, None, [f"dataset.prepared={small_cooking}", "dataset.max_len=16",
                                                  "train.batch_size=64", "train.steps=10"])
    adapted = adapt_to_data(config, PreparedDataset(small_cooking))
    assert adapted.train.epochs == 3 and adapted.train.steps == 0  # 256 points: 4 steps an epoch
    assert "3: the fewest epochs of 4 steps" in adapted.adapted["train.epochs"]
    assert config.train.steps == 10  # the caller's config is not changed


@pytest.mark.integration
def test_a_dataset_file_of_source_and_text_fields_trains_with_adapted_settings(cooking_source, tiny_encoder,
                                                                              tmp_path, monkeypatch):
    from xmc.training.driver import run_training

    source = write_lf_subset(cooking_source, tmp_path / "new-set", 256, 40)
    dataset_file = tmp_path / "new-set.yaml"
    dataset_file.write_text(yaml.safe_dump({"dataset": {"source": str(source), "query_text": "title",
                                                        "label_text": "title"}}))
    monkeypatch.setenv("XMC_WORKDIR", str(tmp_path))  # where the prepared copy goes (data/new-set)
    config = load_config(ExperimentConfig, [dataset_file, REPO / "configs/methods/unidec.yaml"],
                         [f"encoder.model={tiny_encoder}", "train.num_workers=0", "train.epochs=1",
                          "train.max_steps_per_epoch=2", "train.batch_size=32", "train.progress=false",
                          "eval.top_k=10", "dataset.validation_fraction=0.2",
                          f"run.storage={tmp_path / 'runs'}", "run.name=new"])
    _, run = run_training(config)
    written = yaml.safe_load((tmp_path / "runs" / "new" / "config.yaml").read_text())
    assert written["dataset"]["prepared"] == str(tmp_path / "data" / "new-set")
    assert written["dataset"]["max_len"] > 0 and written["dataset"]["label_max_len"] > 0
    assert set(written["adapted"]) == {"dataset.max_len", "dataset.label_max_len", "model.de_weight",
                                       "model.cold_start_offset", "model.clf_untrained",
                                       "model.neighbour_weight"}
    assert written["adapted"]["dataset.max_len"].startswith(f"{written['dataset']['max_len']}: ")
    # with a hold-out, the fused score's settings were chosen on it when training ended, for export
    calibration = json.loads((tmp_path / "runs" / "new" / "calibration.json").read_text())
    assert calibration["validation_points"] == 51 and len(calibration["grid"]) == 80
    assert written["adapted"]["model.de_weight"].startswith(f"{calibration['selected']['de_weight']}: chosen")
