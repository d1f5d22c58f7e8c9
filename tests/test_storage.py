"""Locations as paths or URIs, on an S3-compatible server on 127.0.0.1 that no process shares by path: a
dataset prepared into it and read back with a node-local token cache, predictions, and a training loop
(no Ray) whose checkpoints, metrics and plots land in it, resume from it, export from it to a bundle in it,
and a Predictor that answers from that bundle as from a local one."""

from __future__ import annotations

import concurrent.futures
import json

import numpy as np
import pytest

from xmc import Predictor, storage
from xmc.config import load_config
from xmc.data.dataset import PreparedDataset
from xmc.data.prepare import prepare_dataset
from xmc.evaluation.predictions import load_predictions, save_predictions
from xmc.experiment import ExperimentConfig
from xmc.index.config import ExportConfig
from xmc.index.export import export_run
from xmc.mining.config import AnnConfig
from xmc.models.encoder import resolve_model_dir
from xmc.scoring.run import TrainedRun
from xmc.training.driver import resolve_run, write_run_config
from xmc.training.session import Session
from xmc.training.trainer import Trainer

from conftest import REPO, write_lf_subset


def test_locations_keep_their_options_and_local_paths_become_absolute(tmp_path, monkeypatch):
    uri = "s3://bucket/runs?endpoint_override=127.0.0.1:9000&scheme=http"
    assert storage.join(uri, "demo", "config.yaml") == \
        "s3://bucket/runs/demo/config.yaml?endpoint_override=127.0.0.1:9000&scheme=http"
    assert storage.parent(storage.join(uri, "demo")) == uri
    assert storage.name(storage.join(uri, "demo")) == "demo"
    assert storage.resolve(uri) == uri and not storage.is_local(uri)
    monkeypatch.setenv("XMC_WORKDIR", str(tmp_path))
    assert storage.resolve("runs") == str(tmp_path / "runs")
    assert storage.is_local(f"file://{tmp_path}")
    assert storage.local_path(f"file://{tmp_path}/x") == tmp_path / "x"
    _, path = storage.filesystem(uri)
    assert path == "bucket/runs"


def test_files_and_directories_round_trip(bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("XMC_CACHE", str(tmp_path / "cache"))
    storage.write_json(storage.join(bucket, "a", "manifest.json"), {"k": 1})
    (tmp_path / "up" / "sub").mkdir(parents=True)
    (tmp_path / "up" / "sub" / "x.txt").write_text("x")
    (tmp_path / "up" / "manifest.json").write_text("{}")
    storage.upload_dir(tmp_path / "up", storage.join(bucket, "b"))
    assert storage.read_json(storage.join(bucket, "a", "manifest.json")) == {"k": 1}
    assert storage.list_dir(bucket) == ["a", "b"] and storage.list_dir(storage.join(bucket, "none")) == []
    assert storage.is_dir(storage.join(bucket, "b"))
    assert storage.is_file(storage.join(bucket, "b", "sub", "x.txt"))
    assert not storage.exists(storage.join(bucket, "b", "y.txt"))

    downloads = []
    download = storage.download_dir
    monkeypatch.setattr(storage, "download_dir", lambda *a: downloads.append(a) or download(*a))
    first = storage.materialize(storage.join(bucket, "b"), "copies/b")
    assert (first / "sub" / "x.txt").read_text() == "x" and first == tmp_path / "cache" / "copies" / "b"
    assert storage.materialize(storage.join(bucket, "b"), "copies/b") == first and len(downloads) == 1
    assert storage.materialize(tmp_path / "up", "ignored") == tmp_path / "up"  # local: used where it is

    indices, scores = np.arange(12).reshape(3, 4), np.linspace(1, 0, 12, dtype=np.float32).reshape(3, 4)
    save_predictions(storage.join(bucket, "PRED.npz"), indices, scores)
    loaded = load_predictions(storage.join(bucket, "PRED.npz"), 3, 20)
    assert np.array_equal(loaded[0], indices) and np.array_equal(loaded[1], scores)


def test_a_dataset_in_storage_reads_like_the_local_one(bucket, cooking_source, small_cooking, tmp_path,
                                                       monkeypatch):
    monkeypatch.setenv("XMC_CACHE", str(tmp_path / "cache"))
    source = write_lf_subset(cooking_source, tmp_path / "cooking-stackexchange", 256, 50)
    storage.upload_dir(source, storage.join(bucket, "raw", "cooking-stackexchange"))
    remote = storage.join(bucket, "prepared", "cooking")
    manifest, changed = prepare_dataset(storage.join(bucket, "raw", "cooking-stackexchange"), remote)
    assert changed and manifest["name"] == "cooking-stackexchange"
    assert set(storage.list_dir(remote)) == {*manifest["files"], "manifest.json"}
    assert not prepare_dataset(storage.join(bucket, "raw", "cooking-stackexchange"), remote)[1]  # no-op rerun

    local, there = PreparedDataset(small_cooking), PreparedDataset(remote)
    assert there.manifest["files"] == local.manifest["files"]  # the same Parquet bytes
    assert (there.label_matrix("train") != local.label_matrix("train")).nnz == 0
    assert there.texts("labels") == local.texts("labels") and there.uids("test") == local.uids("test")
    model = resolve_model_dir("default")
    # two workers of one node start at once: one builds the node's cache under the lock, both use it
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        caches = list(pool.map(lambda _: PreparedDataset(remote).token_cache(model, 16, "title", "title",
                                                                             progress=False), range(2)))
    cache = caches[0]
    assert caches[1].directory == cache.directory
    assert cache.directory.is_relative_to(tmp_path / "cache")  # on this node, not in the bucket
    assert [p.name for p in cache.directory.parent.iterdir() if not p.name.startswith(".")] == \
        [cache.directory.name]  # one cache, no half-built copy beside it
    assert np.array_equal(caches[1].arrays("train")[0], cache.arrays("train")[0])
    assert not [name for name in storage.list_dir(remote) if name == "tokens"]
    expected = local.token_cache(model, 16, "title", "title", progress=False)
    for split in ("train", "test", "labels"):
        assert np.array_equal(cache.arrays(split)[0], expected.arrays(split)[0])

    (tmp_path / "junk").mkdir()
    storage.upload_dir(tmp_path / "junk", storage.join(bucket, "occupied"))
    storage.write_text(storage.join(bucket, "occupied", "notes.txt"), "keep me")
    with pytest.raises(Exception, match="refusing to overwrite"):
        prepare_dataset(source, storage.join(bucket, "occupied"))


def test_a_run_in_storage_resumes_exports_and_serves_from_it(bucket, small_cooking, tiny_encoder, tmp_path,
                                                             monkeypatch):
    monkeypatch.setenv("XMC_CACHE", str(tmp_path / "cache"))
    runs = storage.join(bucket, "runs")
    config = load_config(ExperimentConfig, REPO / "configs" / "demo.yaml", [
        "train.num_workers=0", f"dataset.prepared={small_cooking}", "dataset.max_len=16",
        "train.batch_size=64", "train.epochs=2", "train.max_steps_per_epoch=2", "train.progress=false",
        "eval.top_k=10", f"encoder.model={tiny_encoder}", f"run.storage={runs}"])
    config, run = resolve_run(config, "remote")
    assert run == storage.join(runs, "demo") and not storage.is_local(run)
    write_run_config(config, run)

    class Crash(Exception):
        pass

    class CrashingSession(Session):
        def before_step(self, global_step):
            if global_step == 3:
                raise Crash

    with pytest.raises(Crash):  # killed in epoch 2, after epoch 1's checkpoint went to the bucket
        Trainer(config, run, CrashingSession(run)).fit()
    session = Session(run)
    trainer = Trainer(config, run, session)
    trainer.fit()
    assert [name for _, name in session.reports] == ["checkpoint_epoch002_step0000004"]  # resumed
    assert {"config.yaml", "metrics.json", "history.jsonl", "training.png", "predictions.npz", "tensorboard",
            "checkpoint_epoch001_step0000002", "checkpoint_epoch002_step0000004"} <= \
        set(storage.list_dir(run))
    lines = storage.read_text(storage.join(run, "history.jsonl")).splitlines()
    history = [json.loads(line) for line in lines]
    assert [h["epoch"] for h in history] == [1, 2]
    assert storage.list_dir(storage.join(run, "tensorboard"))
    assert not (tmp_path / "runs").exists()

    opened = TrainedRun.open(run)
    assert opened.checkpoint_name == "checkpoint_epoch002_step0000004"
    assert opened.checkpoint.is_relative_to(tmp_path / "cache")
    flat = ExportConfig(ann=AnnConfig(kind="flat"))
    bundle = export_run(run, storage.join(bucket, "bundles", "demo"), flat)
    local = export_run(run, tmp_path / "bundle", flat)
    remote_predictor, local_predictor = Predictor.from_bundle(bundle), Predictor.from_bundle(local)
    assert remote_predictor.version == local_predictor.version
    assert remote_predictor.bundle.directory.is_relative_to(tmp_path / "cache")
    texts = PreparedDataset(small_cooking).texts("test")[:20]
    ids, scores = remote_predictor.topk(texts, 5)
    expected_ids, expected_scores = local_predictor.topk(texts, 5)
    assert np.array_equal(ids, expected_ids) and np.allclose(scores, expected_scores)
    # a shard replica on another node fetches only its part of a remote bundle
    monkeypatch.setenv("XMC_CACHE", str(tmp_path / "other-node"))
    shard_only = Predictor.from_bundle(bundle, encoder=False, labels=False)
    assert shard_only.search(remote_predictor.encode(texts[:2]), 3)[1].shape == (2, 3)
    fetched = tmp_path / "other-node" / "bundles" / shard_only.version
    assert sorted(p.relative_to(fetched).as_posix() for p in fetched.rglob("*") if p.is_file()) == \
        ["shards/00000/index.faiss", "shards/00000/label_ids.npy"]
