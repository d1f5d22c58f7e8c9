"""Offline top-k with a bundle: the same query tower, shard searches and merge as the Serve app."""

from __future__ import annotations

import numpy as np

from xmc.index.bundle import Bundle
from xmc.index.shards import merge_topk


def bundle_topk(bundle: Bundle, texts: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(indices int64 [n, k], scores float32 [n, k])`` for raw query texts, −1 where fewer than k exist."""
    encoder = bundle.load_query_encoder()
    shards = [bundle.load_shard(number) for number in range(bundle.num_shards)]
    vectors = encoder.encode(texts)
    scores, ids = merge_topk([shard.search(vectors, k) for shard in shards], k)
    return ids, scores
