"""Shared fixtures: paths to the real data sets beside the repository, and subsets of them.

Tests run on the real data in ``../shared/data`` (``XMC_SHARED_DATA`` overrides the location); subsets
keep the slow parts (encoding, training) short.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("XMC_SHARED_DATA", REPO.parent / "shared" / "data"))

# The same settings as ../shared/ray-loopback.env, for any test that starts Ray or loads a model.
LOOPBACK_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_USAGE_STATS_REPORT_URL": "http://127.0.0.1:9/",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "GLOO_SOCKET_IFNAME": "lo",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "http_proxy": "http://127.0.0.1:9",
    "https_proxy": "http://127.0.0.1:9",
    "no_proxy": "127.0.0.1,localhost,::1",
    "TOKENIZERS_PARALLELISM": "false",
    "XMC_RAY_DASHBOARD": "0",
}
os.environ.update(LOOPBACK_ENV)
# Serve as scripts/env.sh runs it: the HTTP proxy reaches the ingress over gRPC.
os.environ.setdefault("RAY_SERVE_PROXY_USE_GRPC", "1")


def pytest_collection_modifyitems(config, items):
    """GPU tests run where a CUDA GPU is; elsewhere they are reported as skipped, not silently dropped."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def shared_set(name: str) -> Path:
    path = SHARED_DATA / name
    if not (path / "lbl.json.gz").is_file():
        pytest.fail(f"real data set {name} not found at {path}; "
                    "tests need ../shared/data beside the repository (or XMC_SHARED_DATA)")
    return path


def read_lines(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return handle.read().splitlines()


def write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write("".join(line + "\n" for line in lines))


def write_lf_subset(source: Path, dest: Path, n_train: int | None, n_test: int | None) -> Path:
    """First ``n_train``/``n_test`` points of a real LF set, all of its labels (label ids unchanged)."""
    write_lines(dest / "lbl.json.gz", read_lines(source / "lbl.json.gz"))
    write_lines(dest / "trn.json.gz", read_lines(source / "trn.json.gz")[:n_train])
    write_lines(dest / "tst.json.gz", read_lines(source / "tst.json.gz")[:n_test])
    return dest


def run_job(script: str, *args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run ``jobs/<script>`` as a user would, from the repository root."""
    proc = subprocess.run([sys.executable, str(REPO / "jobs" / script), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **LOOPBACK_ENV})
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} {' '.join(args)} exited {proc.returncode}\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def cooking_source() -> Path:
    return shared_set("cooking-stackexchange")


@pytest.fixture(scope="session")
def cooking_prepared(tmp_path_factory, cooking_source) -> Path:
    """The full cooking-stackexchange set, prepared once per session (about a second)."""
    from xmc.data.prepare import prepare_dataset

    out = tmp_path_factory.mktemp("prepared") / "cooking-stackexchange"
    prepare_dataset(cooking_source, out)
    return out


@pytest.fixture(scope="session")
def small_cooking(tmp_path_factory, cooking_source) -> Path:
    """The first 256 training and 50 test points of cooking-stackexchange with all 736 labels, prepared:
    enough for a few real training steps in the unit tier."""
    from xmc.data.prepare import prepare_dataset

    root = tmp_path_factory.mktemp("small-cooking")
    prepare_dataset(write_lf_subset(cooking_source, root / "source", 256, 50), root / "prepared")
    return root / "prepared"


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory) -> Path:
    """A one-layer, 32-wide BERT with the default encoder's tokenizer (random weights): for tests of plumbing
    (storage, checkpoints, bundles), where the real encoder's size only costs time."""
    import importlib

    from xmc.models.encoder import resolve_model_dir

    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    tiny = importlib.import_module("benchmarks.tiny_encoder")
    return tiny.write_tiny_encoder(tmp_path_factory.mktemp("tiny-encoder"), resolve_model_dir("default"))


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]



def _gloo_worker(rank: int, world: int, port: int, target, args: tuple, out) -> None:
    import torch.distributed as dist

    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
        dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        out.put((rank, target(rank, world, *args), None))
    except BaseException as err:  # reported, so the test fails now rather than at its queue timeout
        out.put((rank, None, f"{type(err).__name__}: {err}"))
        raise
    finally:
        if world > 1:
            dist.destroy_process_group()


def run_on_workers(target, world: int, *args, timeout: float = 300) -> list:
    """``target(rank, world, *args)`` in ``world`` spawned processes that form a gloo group on 127.0.0.1
    (no group for one): the return values, rank by rank. A worker's exception fails the caller with it."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue, port = ctx.Queue(), free_port()
    procs = [ctx.Process(target=_gloo_worker, args=(rank, world, port, target, args, queue))
             for rank in range(world)]
    for proc in procs:
        proc.start()
    results = sorted((queue.get(timeout=timeout) for _ in procs), key=lambda result: result[0])
    for proc in procs:
        proc.join(timeout=60)
    failed = [f"worker {rank}: {error}" for rank, _, error in results if error]
    assert not failed, failed
    assert [proc.exitcode for proc in procs] == [0] * world
    return [value for _, value, _ in results]


#: Credentials of the loopback S3 server (any value works; pyarrow and Ray workers read them from the env).
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
          "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="session")
def s3_endpoint():
    """An S3-compatible server on 127.0.0.1 (moto, in a thread of this process) for storage that no process
    shares by path; stopped at the end of the session."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    os.environ.update(S3_ENV)
    yield f"127.0.0.1:{port}"
    server.stop()


def new_bucket(endpoint: str) -> str:
    """A new, empty bucket on the loopback server: its URI, with the endpoint options every process needs."""
    import uuid

    import pyarrow.fs as pafs

    name = f"xmc-{uuid.uuid4().hex[:12]}"
    options = f"endpoint_override={endpoint}&scheme=http"
    filesystem, _ = pafs.FileSystem.from_uri(f"s3://{name}?{options}&allow_bucket_creation=true")
    filesystem.create_dir(name)
    return f"s3://{name}?{options}"


@pytest.fixture
def bucket(s3_endpoint) -> str:
    return new_bucket(s3_endpoint)


def start_ray() -> None:
    """A fresh local Ray on 127.0.0.1 for a test module (2 CPUs, no dashboard), replacing any Ray that an
    earlier in-process run (Ray Train's local mode) left initialised."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {
        "GLOO_SOCKET_IFNAME": "lo", "RAY_TRAIN_ENABLE_PRINT_PATCH": "0", **LOOPBACK_ENV}},
             _node_ip_address="127.0.0.1")


@pytest.fixture(scope="module")
def ray_session():
    """Ray for the tests of one module; Serve (if a test started it) and Ray are stopped afterwards."""
    import ray

    start_ray()
    yield
    if "ray.serve" in sys.modules:
        from ray import serve

        serve.shutdown()
    ray.shutdown()
