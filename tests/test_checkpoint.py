"""Checkpoint state round trip: a trainer restored from a mid-epoch checkpoint continues bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xmc.config import load_config
from xmc.data.prepare import prepare_dataset
from xmc.experiment import ExperimentConfig
from xmc.training.driver import resolve_run
from xmc.training.state_io import flatten, load_state, rng_state, save_state, unflatten
from xmc.training.trainer import Trainer

from conftest import REPO, write_lf_subset


def test_flatten_round_trip_without_pickle(tmp_path):
    state = {"a": torch.arange(6).reshape(2, 3), 3: [1.5, (np.arange(4, dtype=np.int32), None)], "s": "x",
             "nested": {"step": torch.tensor(7.0), "flag": True}}
    save_state(tmp_path, "state", state)
    loaded = load_state(tmp_path, "state")
    assert torch.equal(loaded["a"], state["a"]) and loaded["s"] == "x" and loaded["nested"]["flag"] is True
    assert loaded[3][0] == 1.5 and isinstance(loaded[3][1], tuple)
    assert np.array_equal(loaded[3][1][0], state[3][1][0]) and loaded[3][1][0].dtype == np.int32
    assert (tmp_path / "state.json").read_text().startswith("{")  # structure in JSON, tensors in safetensors
    with pytest.raises(TypeError, match="cannot save"):
        flatten({"f": object()}, {})
    assert unflatten(flatten([1, 2], {}), {}) == [1, 2]


def _steps(trainer: Trainer, n: int) -> list[float]:
    losses = []
    for _ in range(n):
        losses.append(trainer.train_step(trainer.plan.batch(trainer.step_in_epoch)))
        trainer.step_in_epoch += 1
        trainer.global_step += 1
    return losses


def test_restored_trainer_continues_identically(tmp_path, cooking_source):
    source = write_lf_subset(cooking_source, tmp_path / "source", 512, 50)
    prepare_dataset(source, tmp_path / "prepared")
    config = load_config(ExperimentConfig, REPO / "configs" / "demo.yaml", [
        "train.num_workers=0", f"dataset.prepared={tmp_path / 'prepared'}", "dataset.max_len=32",
        "train.batch_size=64", "train.progress=false", f"run.storage={tmp_path}"])
    config, run_dir = resolve_run(config, "resume")
    # an epoch with mining on: clustered batches and hard negatives are part of the restored state
    first = Trainer(config, run_dir)
    first.initialise_table_from_label_text()
    first.epoch = config.mining.start_epoch
    first.refresh_mining()
    first.plan = first.plan_epoch()
    _steps(first, 3)
    checkpoint = tmp_path / "checkpoint"
    save_state(checkpoint, "model", first.model.state_dict())
    save_state(checkpoint, "optimizer", first.optimizer.state_dict())
    save_state(checkpoint, "trainer", first.state_dict())
    save_state(checkpoint, "table-rank0000", first._shard_state(first.table, first.table_optimizer))
    save_state(checkpoint, "rng-rank0000", rng_state())
    expected = _steps(first, 3)  # dropout is on: the RNG state is part of what must be restored

    second = Trainer(config, run_dir)
    second.restore(checkpoint)
    assert second.step_in_epoch == 3 and second.epoch == config.mining.start_epoch
    assert np.array_equal(second.shortlists, first.shortlists)
    assert _steps(second, 3) == expected
    for (name, a), b in zip(first.model.state_dict().items(), second.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert torch.equal(first.table.rows.weight, second.table.rows.weight)
