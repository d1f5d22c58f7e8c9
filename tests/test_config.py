"""Typed config loading: YAML includes, --set overrides, strict keys and types."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest
import yaml

from xmc.config import ConfigError, dump_yaml, from_dict, load_config, read_yaml_tree
from xmc.experiment import ExperimentConfig

from conftest import REPO


@dataclass(kw_only=True)
class Inner:
    rate: float = 0.1
    mode: Literal["a", "b"] = "a"
    count: int | Literal["all"] = 3
    tags: list[str] = field(default_factory=list)


@dataclass(kw_only=True)
class Outer:
    name: str = "x"
    flag: bool = False
    inner: Inner = field(default_factory=Inner)


def test_include_merge_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("inner:\n  rate: 0.5\n  mode: b\nname: base\n")
    (tmp_path / "top.yaml").write_text("include: [base.yaml]\nname: top\ninner:\n  tags: [p, q]\n")
    cfg = load_config(Outer, tmp_path / "top.yaml", ["inner.count=all", "flag=true", "inner.rate=1e-4"])
    assert cfg.name == "top"
    assert cfg.inner.rate == pytest.approx(1e-4)  # "1e-4" is a YAML string; a float field accepts it
    assert cfg.inner.mode == "b"
    assert cfg.inner.count == "all"
    assert cfg.inner.tags == ["p", "q"]
    assert cfg.flag is True


@pytest.mark.parametrize("override, message", [
    ("inner.rte=0.2", "unknown config key inner.rte"),
    ("nme=y", "unknown config key nme"),
    ("inner.rate=fast", "inner.rate: expected a number, got 'fast'"),
    ("inner.count=2.5", "inner.count: expected int | 'all', got 2.5"),
    ("inner.mode=c", "inner.mode: expected one of 'a' | 'b', got 'c'"),
    ("flag=3", "flag: expected true or false, got 3"),
    ("inner=3", "inner: expected a mapping"),
    ("inner.rate", "expected section.key=value"),
])
def test_bad_keys_and_types_name_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(Outer, None, [override])
    assert message in str(err.value)


def test_include_cycle_and_missing_file(tmp_path):
    (tmp_path / "a.yaml").write_text("include: b.yaml\n")
    (tmp_path / "b.yaml").write_text("include: a.yaml\n")
    with pytest.raises(ConfigError, match="include cycle"):
        read_yaml_tree(tmp_path / "a.yaml")
    with pytest.raises(ConfigError, match="config file not found"):
        read_yaml_tree(tmp_path / "nope.yaml")


def test_every_shipped_config_loads_and_round_trips():
    """Every file under configs/ is valid for the loader that reads it, and a resolved config written to a
    run directory loads back to the same config."""
    from xmc.tuning.config import TuneFile

    paths = sorted((REPO / "configs").rglob("*.yaml"))
    assert paths
    for path in paths:
        kind = TuneFile if path.parent.name == "tune" else ExperimentConfig
        cfg = load_config(kind, path)
        assert from_dict(kind, yaml.safe_load(dump_yaml(cfg))) == cfg, path
        if path.parent.name == "datasets":
            assert cfg.dataset.name == path.stem


def test_dataset_validation_error_names_the_field():
    with pytest.raises(ConfigError, match=r"dataset.max_len must be 0 \(chosen from the data\) or >= 2"):
        load_config(ExperimentConfig, None, ["dataset.max_len=1"])


@pytest.mark.parametrize("share", ["0", "1.5", "-0.3"])
def test_gpu_share_outside_zero_to_one_is_rejected(share):
    with pytest.raises(ConfigError, match=rf"train.gpus_per_worker must be in \(0, 1\].*got {share}"):
        load_config(ExperimentConfig, None, [f"train.gpus_per_worker={share}"])


def test_gpu_share_reaches_ray_and_sets_how_many_tune_trials_share_a_gpu(tmp_path, monkeypatch):
    """0.3 of a GPU per worker: Ray Train asks for that share, and a one-GPU cluster runs three trials."""
    import ray

    from xmc.config import to_dict
    from xmc.training.driver import build_trainer
    from xmc.tuning.config import TuneSweepConfig
    from xmc.tuning.sweep import trial_concurrency

    config = load_config(ExperimentConfig, None, ["train.use_gpu=true", "train.gpus_per_worker=0.3",
                                                  "run.name=share", f"run.storage={tmp_path}"])
    scaling = build_trainer(config, str(tmp_path / "share")).scaling_config
    assert scaling.use_gpu and scaling.resources_per_worker == {"CPU": 0.99, "GPU": 0.3}

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 16.0, "GPU": 1.0})
    base = to_dict(config)
    assert trial_concurrency(TuneSweepConfig(), base) == 3
    base["train"]["gpus_per_worker"] = 0.25
    assert trial_concurrency(TuneSweepConfig(), base) == 4
    base["train"]["gpus_per_worker"] = 1.0
    base["train"]["num_workers"] = 2
    assert trial_concurrency(TuneSweepConfig(), base) == 1


def test_several_workers_never_share_a_gpu_and_custom_resources_reach_ray(tmp_path):
    """NCCL cannot run two ranks of one group on one GPU: a GPU share is for runs of one worker."""
    from xmc.training.driver import build_trainer

    with pytest.raises(ConfigError, match="NCCL cannot run two ranks"):
        load_config(ExperimentConfig, None, ["train.use_gpu=true", "train.num_workers=2",
                                             "train.gpus_per_worker=0.5"])
    load_config(ExperimentConfig, None, ["train.use_gpu=true", "train.num_workers=2"])  # whole GPUs: fine
    config = load_config(ExperimentConfig, None, ["train.worker_resources={trainer: 1}", "run.name=placed",
                                                  f"run.storage={tmp_path}"])
    scaling = build_trainer(config, str(tmp_path / "placed")).scaling_config
    assert scaling.resources_per_worker == {"CPU": 0.99, "trainer": 1.0}


def test_a_section_set_in_part_keeps_the_rest_of_its_own_default():
    from xmc.index.config import ExportConfig

    # the export's index defaults differ from AnnConfig's (HNSW above 50K labels, not IVF above 1M): setting
    # one knob of it must not bring the others back to AnnConfig's
    config = load_config(ExportConfig, overrides=["ann.hnsw_ef_search=128"])
    assert (config.ann.hnsw_ef_search, config.ann.exact_below, config.ann.large_kind) == (128, 50_000, "hnsw")
    assert load_config(ExportConfig, overrides=["ann.large_kind=ivf"]).ann.exact_below == 50_000
