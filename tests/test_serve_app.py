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
