"""Checkpoints without Ray: the no-pickle state format, label shards re-split for another worker count, and a
loop killed mid-epoch that resumes to exactly the model of an uninterrupted one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from xmc import checkpoint as ckpt
from xmc.config import load_config
from xmc.experiment import ExperimentConfig
from xmc.memory import PhaseMeter, resident_mib
from xmc.models.label_table import ShardedLabelTable
from xmc.training.driver import resolve_run
from xmc.training.session import Session
from xmc.training.trainer import Trainer

from conftest import REPO


def test_flatten_round_trip_without_pickle(tmp_path):
    state = {"a": torch.arange(6).reshape(2, 3), 3: [1.5, (np.arange(4, dtype=np.int32), None)], "s": "x",
             "nested": {"step": torch.tensor(7.0), "flag": True}}
    ckpt.save_state(tmp_path, "state", state)
    loaded = ckpt.load_state(tmp_path, "state")
    assert torch.equal(loaded["a"], state["a"]) and loaded["s"] == "x" and loaded["nested"]["flag"] is True
    assert loaded[3][0] == 1.5 and isinstance(loaded[3][1], tuple)
    assert np.array_equal(loaded[3][1][0], state[3][1][0]) and loaded[3][1][0].dtype == np.int32
    assert (tmp_path / "state.json").read_text().startswith("{")  # structure in JSON, tensors in safetensors
    with pytest.raises(TypeError, match="cannot save"):
        ckpt.flatten({"f": object()}, {})
    assert ckpt.unflatten(ckpt.flatten([1, 2], {}), {}) == [1, 2]


def test_tensors_sharing_memory_are_saved_apart_and_the_others_as_they_are(tmp_path):
    table = torch.arange(12, dtype=torch.float32).reshape(4, 3)
    same = ckpt._unshared({"a": table, "b": table[2:], "c": torch.ones(2)})
    assert same["a"] is table and same["b"].data_ptr() != table[2:].data_ptr()  # only the second is copied
    ckpt.save_state(tmp_path, "state", {"a": table, "b": table[2:]})
    loaded = ckpt.load_state(tmp_path, "state")
    assert torch.equal(loaded["a"], table) and torch.equal(loaded["b"], table[2:])


def test_label_shards_are_re_split_for_any_number_of_workers(tmp_path, monkeypatch):
    """Two workers save their rows of an 11-row table; one worker, or rank 1 of three, reads back exactly its
    rows and moments, reading a window of 16 bytes (4 floats: one row) at a time, into its own table."""
    monkeypatch.setattr(ckpt, "READ_CHUNK_BYTES", 16)
    rows = torch.arange(11 * 4, dtype=torch.float32).reshape(11, 4)
    for rank in range(2):
        table = ShardedLabelTable(11, 4, rank, 2, initial=rows.numpy())
        owned = torch.from_numpy(table.owned)
        ckpt.save_state(tmp_path, ckpt.shard_name("table", rank),
                        {"owned": table.owned, "weight": table.rows.weight.detach(), "exp_avg": -rows[owned],
                         "step": torch.tensor(5.0)})
    everything = ckpt.read_rows(tmp_path, "table", ("weight", "exp_avg"), 11, np.arange(11))
    assert torch.equal(everything["weight"], rows) and torch.equal(everything["exp_avg"], -rows)
    assert float(everything["step"]) == 5.0
    third = ShardedLabelTable(11, 4, 1, 3)
    mine = ckpt.read_rows(tmp_path, "table", ("weight",), 11, third.owned,
                          into={"weight": third.rows.weight.data})
    assert mine["weight"].data_ptr() == third.rows.weight.data_ptr()  # filled in place, not a second copy
    assert torch.equal(third.rows.weight.data, rows[torch.from_numpy(third.owned)])
    with pytest.raises(ValueError, match="rows are 4 wide"):
        ckpt.read_rows(tmp_path, "table", ("weight",), 11, third.owned, into={"weight": torch.empty(4, 5)})
    (tmp_path / "table-rank0001.json").unlink()
    with pytest.raises(ValueError, match="miss 5 of this worker's rows"):
        ckpt.read_rows(tmp_path, "table", ("weight",), 11, np.arange(11))
    table = ShardedLabelTable(11, 4, 1, 2, initial=rows.numpy())  # rank 1 again, without its moments
    ckpt.save_state(tmp_path, ckpt.shard_name("table", 1),
                    {"owned": table.owned, "weight": rows[table.owned]})
    with pytest.raises(ValueError, match="hold no exp_avg for 5"):  # never rows of uninitialised memory
        ckpt.read_rows(tmp_path, "table", ("weight", "exp_avg"), 11, np.arange(11))


def test_reading_some_rows_of_a_large_shard_holds_a_window_not_the_saved_tensor(tmp_path, monkeypatch):
    """A worker that owns a quarter of a saved shard's rows (spread over all of it) holds those rows and one
    window at a time, not the whole saved tensor: a restore or an export task reads only its own rows."""
    meter = PhaseMeter()
    if not meter.resettable:
        pytest.skip("this kernel does not let a process reset its peak memory mark")
    monkeypatch.setattr(ckpt, "READ_CHUNK_BYTES", 1 << 20)
    num_rows, width = 160_000, 384  # a saved tensor of 234 MiB
    weight = torch.randn(num_rows, width)
    ckpt.save_state(tmp_path, ckpt.shard_name("table", 0), {"owned": np.arange(num_rows), "weight": weight})
    owned = np.arange(1, num_rows, 4)
    expected = weight[torch.from_numpy(owned)]
    saved_mib = weight.numel() * 4 / 2**20
    del weight
    with meter.phase("read"):
        base = resident_mib()
        mine = ckpt.read_rows(tmp_path, "table", ("weight",), num_rows, owned)["weight"]
    assert torch.equal(mine, expected)
    grew = meter.take()["read"]["peak_rss_mib"] - base
    assert grew < saved_mib / 4 + 32, (grew, saved_mib)  # its quarter and a window, give or take


class Crash(Exception):
    pass


class CrashingSession(Session):
    """A session whose worker dies before global step ``at`` (once)."""

    def __init__(self, checkpoint_root: Path, at: int):
        super().__init__(checkpoint_root)
        self.at = at

    def before_step(self, global_step: int) -> None:
        if global_step == self.at:
            raise Crash(global_step)


@pytest.fixture(scope="module")
def config(small_cooking, tmp_path_factory) -> ExperimentConfig:
    """Two short epochs; the second mines hard negatives and clusters queries, so shortlists, clusters and
    the batch plan are part of what a mid-epoch checkpoint must restore. Dropout stays on: the RNG states are
    part of it too."""
    storage = tmp_path_factory.mktemp("runs")
    config = load_config(ExperimentConfig, REPO / "configs" / "demo.yaml", [
        "train.num_workers=0", f"dataset.prepared={small_cooking}", "dataset.max_len=16",
        "train.batch_size=64", "train.epochs=2", "train.max_steps_per_epoch=3",
        "train.checkpoint_every_steps=2", "train.progress=false", "eval.top_k=10", f"run.storage={storage}"])
    return config


def trained(config: ExperimentConfig, name: str, session: Session) -> Trainer:
    config, run_dir = resolve_run(config, name)
    trainer = Trainer(config, run_dir, session)
    trainer.fit()
    return trainer


def test_a_killed_loop_resumes_to_the_same_model(config, tmp_path):
    reference_session = Session(tmp_path / "reference")
    reference = trained(config, "reference", reference_session)
    reports = [(metrics["step"], name) for metrics, name in reference_session.reports]
    assert reports == [(2, "checkpoint_epoch000_step0000002"), (3, "checkpoint_epoch001_step0000003"),
                       (4, "checkpoint_epoch001_step0000004"), (6, "checkpoint_epoch002_step0000006")]

    with pytest.raises(Crash):  # killed in epoch 2, one step after its mid-epoch checkpoint (step 4)
        trained(config, "resumed", CrashingSession(tmp_path / "resumed", at=5))
    session = Session(tmp_path / "resumed")
    resumed = trained(config, "resumed", session)
    assert [name for _, name in session.reports] == ["checkpoint_epoch002_step0000006"]
    assert session.reports[0][0] == reference_session.reports[-1][0]  # same loss and test metrics
    for (name, a), b in zip(reference.scoring.model.state_dict().items(),
                            resumed.scoring.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert torch.equal(reference.scoring.classifier.rows.weight, resumed.scoring.classifier.rows.weight)
    assert np.array_equal(reference.planner.shortlists, resumed.planner.shortlists)

    # a finished run trains nothing more and reports its final metrics again
    again = Session(tmp_path / "resumed")
    trained(config, "resumed", again)
    assert again.reports == [(session.reports[0][0], None)]
