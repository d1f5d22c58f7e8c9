"""Export bundles and the Ray Serve app on a real subset of cooking-stackexchange: checksums, offline/served
equality, request validation, and a hot swap under load that drops nothing."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from xmc.config import load_config
from xmc.data.prepare import prepare_dataset
from xmc.experiment import ExperimentConfig
from xmc.index.bundle import Bundle, BundleError

from conftest import REPO, free_port, run_job, write_lf_subset

pytestmark = pytest.mark.integration

N_TRAIN, N_TEST = 512, 200


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, cooking_source, ray_session) -> Path:
    """One epoch on 512 real queries, checkpointed every 4 of its 8 steps (two checkpoints kept)."""
    from xmc.training.driver import run_training

    root = tmp_path_factory.mktemp("serve-run")
    source = write_lf_subset(cooking_source, root / "source", N_TRAIN, N_TEST)
    prepare_dataset(source, root / "prepared")
    values = {"dataset.source": source, "dataset.prepared": root / "prepared", "dataset.max_len": 32,
              "train.epochs": 1, "train.batch_size": 64, "train.progress": False, "train.num_workers": 1,
              "train.checkpoint_every_steps": 4, "train.keep_checkpoints": 2, "run.storage": root / "runs",
              "run.name": "serve"}
    config = load_config(ExperimentConfig, REPO / "configs" / "demo.yaml",
                         [f"{k}={v}" for k, v in values.items()])
    _, run_dir = run_training(config)
    return Path(run_dir)


@pytest.fixture(scope="module")
def bundles(trained_run, tmp_path_factory) -> tuple[Path, Path]:
    """The final model (through the CLI) and the mid-epoch checkpoint with labels edited after training:
    "caramel" and "eggs" removed, "marzipan" added. Two versions with the same shards."""
    from xmc.index.config import ExportConfig
    from xmc.index.export import export_run

    out = tmp_path_factory.mktemp("bundles")
    checkpoints = sorted(p.name for p in trained_run.glob("checkpoint_*") if p.is_dir())
    assert len(checkpoints) == 2, checkpoints
    run_job("export.py", "--run", str(trained_run), "--shards", "2", "--out", str(out / "final"))
    (out / "removed.txt").write_text("caramel\neggs\n")
    (out / "added.json").write_text(json.dumps({"uid": "marzipan", "title": "marzipan"}) + "\n")
    export_run(trained_run, out / "mid", ExportConfig(shards=2, checkpoint=checkpoints[0],
                                                      add_labels=str(out / "added.json"),
                                                      remove_labels=str(out / "removed.txt")))
    return out / "final", out / "mid"


def test_export_writes_a_verified_bundle_that_scores_like_the_run(trained_run, bundles, tmp_path):
    final, mid = bundles
    bundle = Bundle(final)
    manifest = bundle.manifest
    assert manifest["counts"] == {"labels": 736, "label_ids": 736, "shards": 2, "dim": 768}  # 384 + 384
    assert [s["labels"] for s in manifest["shards"]] == [368, 368]
    assert manifest["source"]["checkpoint"] == max(p.name for p in trained_run.glob("checkpoint_*")
                                                   if p.is_dir())
    assert {"encoder/model.safetensors", "heads.safetensors", "labels.parquet", "shards/00000/index.faiss",
            "shards/00001/label_ids.npy"} <= set(manifest["files"])
    assert not list(final.rglob("*.pkl")) and not list(final.rglob("*.bin"))
    bundle.verify()
    assert Bundle(mid).version != bundle.version

    # the bundle, evaluated offline from raw test texts, ranks like the run's own final evaluation
    run_job("evaluate.py", "--data", str(trained_run.parent.parent / "prepared"), "--bundle", str(final),
            "--out", str(tmp_path))
    served = json.loads((tmp_path / "metrics.json").read_text())
    trained = json.loads((trained_run / "metrics.json").read_text())
    for key in ("P@1", "P@5", "PSP@5"):
        assert served[key] == pytest.approx(trained[key], abs=0.51), key  # one query of 200 may flip on a tie
    with np.load(tmp_path / "PRED.npz") as offline, np.load(trained_run / "predictions.npz") as run:
        assert np.mean(offline["indices"][:, 0] == run["indices"][:, 0]) >= 0.99


def test_corrupt_or_partial_bundle_is_refused_by_name(bundles, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(bundles[0], broken)
    index_file = broken / "shards" / "00001" / "index.faiss"
    data = bytearray(index_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    index_file.write_bytes(bytes(data))
    Bundle(broken).load_shard(0)  # the intact shard still loads
    with pytest.raises(BundleError, match=r"shards/00001/index\.faiss: sha256 .* corrupt"):
        Bundle(broken).load_shard(1)

    (broken / "labels.parquet").unlink()
    with pytest.raises(BundleError, match=r"labels\.parquet: missing"):
        Bundle(broken).load_labels()

    (broken / "manifest.json").unlink()
    with pytest.raises(BundleError, match=r"manifest\.json: missing: the bundle is partial"):
        Bundle(broken)
    proc = run_job("evaluate.py", "--data", str(tmp_path), "--bundle", str(broken),
                   "--out", str(tmp_path / "o"), check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr


# ------------------------------------------------------------------------------------------------------------
# Serve


#: The replicas' CPU reservations: half of the test Ray's 2 CPUs for the app under test, so that a second app
#: fits beside it (with the defaults, 1 + 2 x 0.5, the first takes both, and a second one's replicas wait for
#: CPUs forever, holding `serve.run`).
CPUS = {"ingress_cpus": 0.5, "shard_cpus": 0.25}


@pytest.fixture(scope="module")
def served(bundles, ray_session):
    """The app serving the final bundle on 127.0.0.1; yields its base URL."""
    from ray import serve

    sys_path_app = _serve_app()
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(sys_path_app.app({"bundle": str(bundles[0]), "shards": 2, **CPUS}), name="xmc",
              route_prefix="/")
    yield f"http://127.0.0.1:{sys_path_app.http_port(port)}"
    serve.delete("xmc")


def _serve_app():
    import importlib
    import sys

    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    return importlib.import_module("serve.app")


def assert_same_ranking(served_ids, served_scores, offline_ids, offline_scores) -> np.ndarray:
    """Same scores, and the same ids except where labels whose scores tie within float noise swap places;
    returns where the ids differ."""
    np.testing.assert_allclose(served_scores, offline_scores, atol=1e-4)
    differs = served_ids != offline_ids
    assert np.all(np.abs(served_scores - offline_scores)[differs] < 1e-4)
    return differs


def test_served_top_k_equals_the_offline_top_k(served, bundles, trained_run):
    from xmc import Predictor
    from xmc.data.dataset import PreparedDataset

    bundle = Bundle(bundles[0])
    texts = PreparedDataset(trained_run.parent.parent / "prepared").texts("test")
    offline_ids, offline_scores = Predictor.from_bundle(bundles[0]).topk(texts, 10)
    info = requests.get(f"{served}/v1/info", timeout=30).json()
    assert info["version"] == bundle.version and info["labels"] == 736 and info["shards"] == 2
    assert requests.get(f"{served}/healthz", timeout=30).json() == {"status": "ok", "version": bundle.version}

    uids, labels = bundle.load_labels()
    served_ids, served_scores = [], []
    for start in range(0, len(texts), 50):
        reply = requests.post(f"{served}/v1/predict", json={"texts": texts[start:start + 50], "k": 10},
                              timeout=60)
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["version"] == bundle.version
        for row in body["results"]:
            assert [hit["label"] for hit in row] == [labels[hit["id"]] for hit in row]
            assert [hit["uid"] for hit in row] == [uids[hit["id"]] for hit in row]
            served_ids.append([hit["id"] for hit in row])
            served_scores.append([hit["score"] for hit in row])
    served_ids, served_scores = np.array(served_ids), np.array(served_scores)
    assert served_ids.shape == (N_TEST, 10)
    differs = assert_same_ranking(served_ids, served_scores, offline_ids, offline_scores)
    assert differs.mean() < 0.01

    single = requests.post(f"{served}/v1/predict", json={"text": texts[0], "k": 3}, timeout=30).json()
    assert [hit["id"] for hit in single["results"][0]] == offline_ids[0, :3].tolist()


def test_concurrent_requests_with_different_k_each_get_their_own_top_k(served, bundles, trained_run):
    """Concurrent requests are encoded and searched together (one batch, one call per shard, at the largest
    k); each must still get exactly its own top-k."""
    from concurrent.futures import ThreadPoolExecutor

    from xmc import Predictor
    from xmc.data.dataset import PreparedDataset

    texts = PreparedDataset(trained_run.parent.parent / "prepared").texts("test")[:96]
    offline_ids, offline_scores = Predictor.from_bundle(bundles[0]).topk(texts, 20)
    ks = [1 + (7 * i) % 20 for i in range(len(texts))]

    def ask(i: int) -> list[dict]:
        reply = requests.post(f"{served}/v1/predict", json={"text": texts[i], "k": ks[i]}, timeout=60)
        assert reply.status_code == 200, reply.text
        return reply.json()["results"][0]

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(len(texts))))
    for i, hits in enumerate(answers):
        assert len(hits) == ks[i]
        assert_same_ranking(np.array([h["id"] for h in hits]), np.array([h["score"] for h in hits]),
                            offline_ids[i, :ks[i]], offline_scores[i, :ks[i]])


@pytest.mark.parametrize("body, status, message", [
    ({"text": "   "}, 422, '"text" is empty'),
    ({"texts": []}, 422, '"texts" is empty'),
    ({"texts": ["ok", ""]}, 422, '"texts[1]" is empty'),
    ({"texts": ["salt"] * 65}, 422, "at most 64 per request"),
    ({"text": "x" * 2001}, 422, "at most 2000"),
    ({"text": "salt", "k": 0}, 422, "k: Input should be greater than or equal to 1"),
    ({"text": "salt", "k": 101}, 422, "k: Input should be less than or equal to 100"),
    ({"text": "salt", "texts": ["salt"]}, 422, 'exactly one of "text"'),
    ({"query": "salt"}, 422, "query: Extra inputs are not permitted"),
    ({"text": 3}, 422, "text: Input should be a valid string"),
    ({"text": "salt", "k": True}, 422, "k: Input should be a valid integer"),
    ({"text": "salt", "k": "10"}, 422, "k: Input should be a valid integer"),
    ("{not json", 400, "not valid JSON"),
    ('{"text": ' + "[" * 100_000 + "]" * 100_000 + "}", 400, "nested too deeply"),
    ('{"text": "' + "x" * (10 << 20) + '"}', 413, "request body over"),
])
def test_bad_requests_get_a_4xx_that_says_what_is_wrong(served, body, status, message):
    if isinstance(body, str):
        reply = requests.post(f"{served}/v1/predict", data=body, headers={"Content-Type": "application/json"},
                              timeout=30)
    else:
        reply = requests.post(f"{served}/v1/predict", json=body, timeout=30)
    assert reply.status_code == status, reply.text
    assert message in reply.json()["error"], reply.json()


@pytest.mark.parametrize("variant", ["shards in the ingress", "neighbour channel"])
def test_other_deployments_answer_as_the_offline_predictor(served, bundles, trained_run, tmp_path, variant):
    """shards_in_ingress: one deployment, no shard replica. A bundle with the query-neighbour channel: each
    shard returns its top 100, the ingress merges and re-ranks them. Both answer as the offline Predictor."""
    from ray import serve

    from xmc import Predictor
    from xmc.data.dataset import PreparedDataset

    app_module = _serve_app()
    bundle, args = bundles[0], {"shards_in_ingress": True}
    if variant == "neighbour channel":
        bundle, args = tmp_path / "neighbours", {}
        run_job("export.py", "--run", str(trained_run), "--shards", "2", "--out", str(bundle),
                "--set", "neighbour_weight=0.5")
        assert Bundle(bundle).manifest["neighbours"]["queries"] == N_TRAIN
    texts = PreparedDataset(trained_run.parent.parent / "prepared").texts("test")[:40]
    offline_ids, offline_scores = Predictor.from_bundle(bundle).topk(texts, 10)
    serve.run(app_module.app({"bundle": str(bundle), **args, **CPUS}), name="xmc-other",
              route_prefix="/other")
    try:
        deployments = set(serve.status().applications["xmc-other"].deployments)
        assert deployments == ({"Ingress"} if args else {"Ingress", "IndexShard0", "IndexShard1"})
        reply = requests.post(f"{served}/other/v1/predict", json={"texts": texts, "k": 10}, timeout=60)
        assert reply.status_code == 200, reply.text
        rows = reply.json()["results"]
        served_ids = np.array([[hit["id"] for hit in row] for row in rows])
        served_scores = np.array([[hit["score"] for hit in row] for row in rows])
        assert served_ids.shape == (len(texts), 10)
        assert assert_same_ranking(served_ids, served_scores, offline_ids, offline_scores).mean() < 0.01
    finally:
        serve.delete("xmc-other")


def test_hot_swap_under_load_drops_no_request(served, bundles):
    from ray import serve

    app_module = _serve_app()
    final, mid = (Bundle(path).version for path in bundles)
    stop = threading.Event()
    answers: list[tuple[float, str]] = []
    failures: list[str] = []

    def client(texts: list[str]) -> None:
        session = requests.Session()
        while not stop.is_set():
            try:
                reply = session.post(f"{served}/v1/predict", json={"texts": texts, "k": 5}, timeout=60)
                if reply.status_code != 200 or len(reply.json()["results"]) != len(texts):
                    failures.append(f"{reply.status_code}: {reply.text[:200]}")
                else:
                    answers.append((time.monotonic(), reply.json()["version"]))
            except requests.RequestException as err:
                failures.append(repr(err))

    queries = [["how long to boil an egg"], ["sourdough starter smells like acetone", "cast iron rust"],
               ["substitute for buttermilk"], ["why did my caramel crystallize"]]
    threads = [threading.Thread(target=client, args=(texts,)) for texts in queries]  # 4 concurrent clients
    for thread in threads:
        thread.start()
    time.sleep(2)
    swap_started = time.monotonic()
    serve.run(app_module.app({"bundle": str(bundles[1]), "shards": 2, **CPUS}), name="xmc", route_prefix="/")
    swapped = time.monotonic()
    time.sleep(3)
    stop.set()
    for thread in threads:
        thread.join()

    assert failures == []
    before = [version for at, version in answers if at < swap_started]
    after = [version for at, version in answers if at > swapped + 0.5]
    assert {version for _, version in answers} <= {final, mid}
    assert final in {version for _, version in answers} and after and set(after) == {mid}
    assert before and set(before) == {final}
    assert len(answers) > 20
    # the new version's label edits are served: removed labels never come back, the added one does
    reply = requests.post(f"{served}/v1/predict", json={"texts": ["caramel", "eggs", "marzipan"], "k": 100},
                          timeout=30).json()
    uids = [[hit["uid"] for hit in row] for row in reply["results"]]
    assert reply["version"] == mid and uids[2][0] == "marzipan"
    assert not {"caramel", "eggs"} & {uid for row in uids for uid in row}
