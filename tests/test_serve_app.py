"""The Serve app without a running Serve: a shard replica lost mid-request becomes a 503 to retry."""

from __future__ import annotations

import asyncio
import importlib
import json
import sys

import numpy as np
import pytest
from ray.exceptions import ActorDiedError

from conftest import REPO


@pytest.fixture(scope="module")
def serve_app():
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    return importlib.import_module("serve.app")


class Shard:
    """A shard handle whose replica answers, or dies during the call."""

    def __init__(self, lost: bool):
        self.lost = lost
        self.search = self

    def remote(self, vectors, k, version, path):
        async def call():
            if self.lost:
                raise ActorDiedError()
            return np.ones((len(vectors), k), np.float32), np.zeros((len(vectors), k), np.int64)
        return call()


def test_a_lost_shard_replica_becomes_a_503_to_retry(serve_app):
    vectors = np.zeros((2, 4), np.float32)
    parts = asyncio.run(serve_app.search_shards([Shard(False), Shard(False)], vectors, 3, "v1", "s3://b/x"))
    assert [scores.shape for scores, _ in parts] == [(2, 3), (2, 3)]
    with pytest.raises(serve_app.ShardUnavailable, match="retry the request") as lost:
        asyncio.run(serve_app.search_shards([Shard(False), Shard(True)], vectors, 3, "v1", "s3://b/x"))
    reply = serve_app.unavailable(lost.value)
    assert reply.status_code == 503 and reply.headers["retry-after"] == "1"
    assert "ActorDiedError" in json.loads(reply.body)["error"]


@pytest.fixture(scope="module")
def client(serve_app):
    """The API's guard (size limit, one error shape) and request model on a bare FastAPI app."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    app = serve_app.guard(FastAPI())

    async def predict(body):
        return {"texts": body.all_texts(), "k": body.k}

    predict.__annotations__["body"] = serve_app.PredictRequest  # this module's annotations are strings
    app.post("/v1/predict")(predict)
    return TestClient(app)


@pytest.mark.parametrize("k", [True, "10", 10.0])
def test_k_must_be_a_json_integer(client, k):
    reply = client.post("/v1/predict", json={"text": "salt", "k": k})
    assert reply.status_code == 422 and reply.json() == {"error": "k: Input should be a valid integer"}
    assert client.post("/v1/predict", json={"text": "salt", "k": 10}).json() == {"texts": ["salt"], "k": 10}


def test_a_body_over_the_limit_is_refused_unread(client, serve_app):
    limit, as_json = serve_app.MAX_BODY_BYTES, {"Content-Type": "application/json"}
    largest_valid = {"texts": ["\u00e9" * serve_app.MAX_TEXT_CHARS] * serve_app.MAX_TEXTS}
    body = json.dumps(largest_valid)  # every character written as a 6-byte escape
    assert len(body) < limit
    reply = client.post("/v1/predict", content=body, headers=as_json)
    assert reply.status_code == 200, reply.text
    reply = client.post("/v1/predict", content=b"x" * (10 << 20), headers=as_json)
    assert reply.status_code == 413 and f"over {limit} bytes" in reply.json()["error"]

    # no Content-Length (chunked): refused once what arrived passes the limit, the rest never read
    chunk, received, sent = 64 << 10, [], []

    async def receive():
        received.append(chunk)
        return {"type": "http.request", "body": b"x" * chunk, "more_body": True}  # an endless body

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/predict", "raw_path": b"/v1/predict",
             "query_string": b"", "headers": [(b"content-type", b"application/json")], "http_version": "1.1",
             "scheme": "http", "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 5000), "root_path": ""}
    asyncio.run(client.app(scope, receive, send))
    assert sent[0]["status"] == 413 and f"over {limit} bytes" in json.loads(sent[1]["body"])["error"]
    assert sum(received) <= limit + chunk
    reply = client.post("/v1/predict", content=b"{}", headers={"Content-Length": "many"})
    assert reply.status_code == 400 and "Content-Length" in reply.json()["error"]


@pytest.mark.parametrize("request_, status, message", [
    (("post", "/v1/predict", '{"text": ' + "[" * 100_000 + "]" * 100_000 + "}"), 400, "nested too deeply"),
    (("post", "/v1/predict", "{not json"), 400, "not valid JSON"),
    (("post", "/v1/predict", '{"text": "salt", "k": 0}'), 422, "greater than or equal to 1"),
    (("get", "/v1/predict", None), 405, "Method Not Allowed"),
    (("post", "/v2/predict", "{}"), 404, "Not Found"),
])
def test_every_error_has_one_shape(client, request_, status, message):
    method, path, body = request_
    reply = client.request(method, path, content=body, headers={"Content-Type": "application/json"})
    assert reply.status_code == status
    assert list(reply.json()) == ["error"] and message in reply.json()["error"]


def test_the_http_port_is_the_proxys_or_with_direct_ingress_the_ingress_replicas(serve_app, monkeypatch):
    monkeypatch.delenv("RAY_SERVE_ENABLE_DIRECT_INGRESS", raising=False)
    assert serve_app.http_port(8000) == 8000
    monkeypatch.setenv("RAY_SERVE_ENABLE_DIRECT_INGRESS", "1")
    monkeypatch.setenv("RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT", "38123")
    assert serve_app.http_port(8000) == 38123


def test_server_timing_names_each_stage_in_milliseconds(serve_app):
    header = serve_app.server_timing({"encode": 0.0125, "shards": 0.003, "ingress": 0.02})
    assert header == "encode;dur=12.50, shards;dur=3.00, ingress;dur=20.00"
