"""The configs for the papers' benchmarks: every dataset file with every paper schedule loads, and each
dataset file trains on a look-alike of its download (a slice of a shared set written in the Extreme
Classification Repository's LF file layout, reciprocal-pair filter files included) with only dataset.source
changed."""

from __future__ import annotations

import gzip
import json

import pytest

from xmc.config import load_config
from xmc.experiment import ExperimentConfig

from conftest import REPO, read_lines

DATASETS = ["lf-amazontitles-131k", "lf-amazon-131k", "lf-wikiseealsotitles-320k", "lf-amazontitles-1.3m"]
METHODS = ["unidec", "dexml", "prime"]


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("method", METHODS)
def test_every_paper_config_loads(dataset, method):
    config = load_config(ExperimentConfig, [REPO / "configs/datasets" / f"{dataset}.yaml",
                                            REPO / "configs/paper" / f"{method}.yaml"])
    assert config.dataset.name == dataset and config.train.use_gpu
    constants = (0.6, 2.6) if "amazon" in dataset else (0.55, 1.5)
    assert (config.dataset.propensity_a, config.dataset.propensity_b) == constants
    assert config.train.epochs >= 100  # the papers' GPU schedules, not the CPU recipes


def write_lookalike(source, dest, n_train: int, n_test: int):
    """The LF layout of a download: gzip'd JSON lines and the two filter files of ``row label`` pairs."""
    dest.mkdir(parents=True)
    (dest / "lbl.json.gz").write_bytes((source / "lbl.json.gz").read_bytes())
    for name, count in (("trn", n_train), ("tst", n_test)):
        lines = read_lines(source / f"{name}.json.gz")[:count]
        with gzip.open(dest / f"{name}.json.gz", "wt", encoding="utf-8") as handle:
            handle.write("".join(line + "\n" for line in lines))
        # a point's own first label as its reciprocal pair, for every fifth point
        pairs = [f"{row} {json.loads(line)['target_ind'][0]}" for row, line in enumerate(lines)
                 if row % 5 == 0]
        split = "train" if name == "trn" else "test"
        (dest / f"filter_labels_{split}.txt").write_text("\n".join(pairs) + "\n")
    return dest


@pytest.mark.integration
@pytest.mark.parametrize("dataset,method", list(zip(DATASETS, ["unidec", "prime", "dexml", "unidec"])))
def test_a_lookalike_of_each_download_trains_with_only_the_source_changed(dataset, method, cooking_source,
                                                                         tiny_encoder, tmp_path):
    from xmc.training.driver import run_training

    source = write_lookalike(cooking_source, tmp_path / "download", 256, 60)
    config = load_config(ExperimentConfig, [REPO / "configs/datasets" / f"{dataset}.yaml",
                                            REPO / "configs/paper" / f"{method}.yaml"],
                         [f"dataset.source={source}", f"dataset.prepared={tmp_path / 'prepared'}",
                          # a CPU and a few steps instead of the GPU schedule
                          f"encoder.model={tiny_encoder}", "train.use_gpu=false", "train.num_workers=0",
                          "train.epochs=2", "train.max_steps_per_epoch=2", "train.batch_size=32",
                          "train.progress=false", "eval.top_k=10", f"run.storage={tmp_path / 'runs'}"])
    result, run = run_training(config)
    metrics = json.loads((tmp_path / "runs" / config.run.name / "metrics.json").read_text())
    assert metrics["epoch"] == 2 and 0 <= metrics["P@1"] <= 100
    manifest = json.loads((tmp_path / "prepared" / "manifest.json").read_text())
    assert manifest["counts"]["filter_test"] == 12  # the filter file was read: 60 test points, every fifth
