"""Several Ray nodes on this host (``ray.cluster_utils.Cluster``) and storage no node shares by path (an S3
server on 127.0.0.1): training with rank 0 on a worker node writes only to storage and finishes after that
node is lost mid-epoch; a job submitted from a copy of the repository the cluster never saw; export to and
Serve from bundle URIs, with a shard replica killed under load.

The runs use a one-layer encoder: what is tested is where things run and land, not quality."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import requests

from xmc import Predictor, storage
from xmc.config import load_config
from xmc.data.prepare import prepare_dataset
from xmc.experiment import ExperimentConfig
from xmc.index.config import ExportConfig
from xmc.index.export import export_run
from xmc.mining.config import AnnConfig

from conftest import REPO, free_port, new_bucket, write_lf_subset

pytestmark = pytest.mark.integration

#: The lost-node run stops after this many steps: one after its mid-epoch checkpoint of epoch 2.
HANG_AT_STEP = 7


@pytest.fixture(scope="module")
def cluster(s3_endpoint, tmp_path_factory):
    """A head node (no training resource) and one worker node with the ``trainer`` resource, joined by this
    process with the library and the Serve app shipped as runtime-environment modules."""
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    marker = tmp_path_factory.mktemp("faults") / "stopped"
    env = {"XMC_TEST_HANG_AT_STEP": str(HANG_AT_STEP), "XMC_TEST_FAIL_MARKER": str(marker),
           "XMC_CACHE": str(tmp_path_factory.mktemp("node-cache")), "RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}
    os.environ.update(env)  # the nodes inherit this process's environment
    dashboard = free_port()
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": True,
        "dashboard_host": "127.0.0.1", "dashboard_port": dashboard, "resources": {"head": 1}})
    worker = cluster.add_node(num_cpus=2, resources={"trainer": 1}, node_ip_address="127.0.0.1")
    ray.init(address=cluster.address, runtime_env={"py_modules": [str(REPO / "platform" / "xmc"),
                                                                  str(REPO / "serve")]})
    yield SimpleNamespace(cluster=cluster, worker=worker, marker=marker, address=cluster.address,
                          dashboard=f"http://127.0.0.1:{dashboard}", bucket=new_bucket(s3_endpoint))
    if "ray.serve" in sys.modules:
        from ray import serve

        serve.shutdown()
    ray.shutdown()
    cluster.shutdown()
    for key in env:
        os.environ.pop(key, None)


@pytest.fixture(scope="module")
def dataset(cluster, cooking_source, tmp_path_factory) -> str:
    """256 cooking questions prepared into the bucket."""
    source = write_lf_subset(cooking_source, tmp_path_factory.mktemp("source") / "cooking", 256, 50)
    location = storage.join(cluster.bucket, "data", "cooking")
    prepare_dataset(source, location)
    return location


def config_for(cluster, dataset: str, tiny_encoder: Path, name: str, *extra: str) -> ExperimentConfig:
    return load_config(ExperimentConfig, REPO / "configs" / "demo.yaml", [
        f"dataset.prepared={dataset}", f"encoder.model={tiny_encoder}", "dataset.max_len=16",
        "train.batch_size=32", "train.epochs=2", "train.max_steps_per_epoch=4",
        "train.checkpoint_every_steps=2", "train.num_workers=1", "train.worker_resources={trainer: 1}",
        "train.max_failures=1", "train.progress=false", "model.dropout=0.0", "eval.top_k=10",
        f"run.ray_address={cluster.address}",
        f"run.storage={storage.join(cluster.bucket, 'runs')}", f"run.name={name}", *extra])


@pytest.fixture(scope="module")
def runs(cluster, dataset, tiny_encoder) -> SimpleNamespace:
    """A run whose worker's node is removed mid-epoch (a replacement node joins), then the same run
    uninterrupted."""
    from xmc.training.driver import run_training

    outcome = {}

    def train():
        outcome["lost"] = run_training(config_for(cluster, dataset, tiny_encoder, "lost"))[1]

    thread = threading.Thread(target=train)
    thread.start()
    deadline = time.time() + 300
    while not cluster.marker.exists() and time.time() < deadline and thread.is_alive():
        time.sleep(0.5)
    assert cluster.marker.read_text().startswith(f"stopped at step {HANG_AT_STEP}")
    cluster.cluster.remove_node(cluster.worker)
    cluster.cluster.add_node(num_cpus=2, resources={"trainer": 1}, node_ip_address="127.0.0.1")
    thread.join(timeout=300)
    assert not thread.is_alive() and "lost" in outcome
    _, reference = run_training(config_for(cluster, dataset, tiny_encoder, "reference"))
    return SimpleNamespace(lost=outcome["lost"], reference=reference)


def test_rank_zero_on_a_lost_node_resumes_elsewhere_to_the_same_model(runs, tmp_path):
    lost, reference = (storage.read_json(storage.join(run, "metrics.json"))
                       for run in (runs.lost, runs.reference))
    assert lost == reference  # resumed from the step-6 checkpoint on the new node: the same model
    lines = storage.read_text(storage.join(runs.lost, "history.jsonl")).splitlines()
    history = [json.loads(line) for line in lines]
    assert [h["epoch"] for h in history] == [1, 2]
    names = storage.list_dir(runs.lost)
    assert {"config.yaml", "metrics.json", "training.png", "predictions.npz", "tensorboard"} <= set(names)
    assert "checkpoint_epoch002_step0000008" in names
    assert not (REPO / "runs" / "lost").exists() and not (Path.cwd() / "runs" / "lost").exists()


def test_jobs_submitted_from_a_copy_the_cluster_never_saw(cluster, dataset, tiny_encoder, tmp_path):
    """Train, export and serve from a copy of the repository: the copy's code runs (its version string
    differs), the run and the bundle land in storage, Serve answers from the bundle URI, the copy gains no
    file."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split()
    copy = tmp_path / "copy"
    for name in listed:
        if (REPO / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, copy / name)
    init = copy / "platform" / "xmc" / "__init__.py"
    init.write_text(init.read_text().replace('__version__ = "0.1.0"', '__version__ = "0.1.0+submitted-copy"'))
    before = sorted(p.relative_to(copy) for p in copy.rglob("*"))
    runs = storage.join(cluster.bucket, "submitted")
    training = ["jobs/train.py", "--config", "configs/demo.yaml",
                "--set", f"dataset.prepared={dataset}", "--set", f"encoder.model={tiny_encoder}",
                "--set", "dataset.max_len=16", "--set", "train.batch_size=32", "--set", "train.epochs=1",
                "--set", "train.max_steps_per_epoch=2", "--set", "train.progress=false",
                "--set", "train.worker_resources={trainer: 1}", "--set", f"run.storage={runs}"]
    env = {**os.environ, "RAY_AUTH_MODE": "token",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}

    def submit(*job: str) -> str:
        command = ["ray", "job", "submit", "--address", cluster.dashboard, "--working-dir", str(copy), "--",
                   sys.executable, *job]
        for _ in range(6):  # a loaded machine may not have the job agent registered yet: Ray says to retry
            proc = subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True, timeout=600)
            if "No available agent to submit job" not in proc.stderr:
                break
            time.sleep(10)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout

    assert "xmc 0.1.0+submitted-copy from" in submit(*training)
    run = storage.join(runs, "demo")
    assert storage.is_file(storage.join(run, "metrics.json"))
    bundle = storage.join(runs, "bundle")
    submit("jobs/export.py", "--run", run, "--shards", "2", "--out", bundle)
    port = free_port()
    # every node of this cluster is on 127.0.0.1: one HTTP proxy, on the head
    submit("jobs/deploy.py", "--bundle", bundle, "--shards", "2", "--port", str(port),
           "--name", "submitted", "--proxy-location", "HeadOnly")
    texts = ["how long to boil an egg", "cast iron rust"]
    from serve.app import http_port

    served = requests.post(f"http://127.0.0.1:{http_port(port)}/v1/predict", json={"texts": texts, "k": 3},
                           timeout=60)
    assert served.status_code == 200, served.text
    expected, _ = Predictor.from_bundle(bundle).topk(texts, 3)
    assert [[hit["id"] for hit in row] for row in served.json()["results"]] == expected.tolist()
    assert sorted(p.relative_to(copy) for p in copy.rglob("*")) == before


def test_serving_a_bundle_uri_survives_a_lost_shard_replica(cluster, runs, tmp_path):
    import ray
    from ray import serve

    from serve.app import app, http_port

    bundle = export_run(runs.reference, storage.join(cluster.bucket, "bundles", "reference"),
                        ExportConfig(shards=2, ann=AnnConfig(kind="flat")))
    serve.shutdown()  # a Serve the jobs started, on another port
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(app({"bundle": bundle, "shards": 2, "shard_cpus": 0.25, "ingress_cpus": 0.5}), name="xmc",
              route_prefix="/")
    url = f"http://127.0.0.1:{http_port(port)}/v1/predict"
    texts = ["how long to boil an egg", "cast iron rust", "substitute for buttermilk", "sourdough starter"]
    stop, answers, failures = threading.Event(), [], []

    def client(text: str) -> None:
        session = requests.Session()
        while not stop.is_set():
            try:
                reply = session.post(url, json={"text": text, "k": 5}, timeout=60)
                answers.append((time.monotonic(), reply.status_code, reply.json()))
            except requests.RequestException as err:  # a hang or a dropped connection
                failures.append(repr(err))

    threads = [threading.Thread(target=client, args=(text,)) for text in texts]
    for thread in threads:
        thread.start()
    time.sleep(2)
    replica = next(actor for actor in ray.util.list_named_actors(all_namespaces=True)
                   if "IndexShard0" in actor["name"])
    killed_at = time.monotonic()
    ray.kill(ray.get_actor(replica["name"], namespace=replica["namespace"]), no_restart=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any(at > killed_at + 1 and status == 200
                                                  for at, status, _ in answers):
        time.sleep(0.5)
    stop.set()
    for thread in threads:
        thread.join()
    assert failures == []
    assert {status for _, status, _ in answers} <= {200, 503}
    assert all("retry" in body["error"] for _, status, body in answers if status == 503)
    assert any(at > killed_at + 1 and status == 200 for at, status, _ in answers)  # recovered

    offline = Predictor.from_bundle(bundle)
    expected_ids, expected_scores = offline.topk(texts, 5)
    for text, ids, scores in zip(texts, expected_ids, expected_scores):
        reply = requests.post(url, json={"text": text, "k": 5}, timeout=60).json()
        assert [hit["id"] for hit in reply["results"][0]] == ids.tolist()
        np.testing.assert_allclose([hit["score"] for hit in reply["results"][0]], scores, atol=1e-4)
    serve.delete("xmc")
