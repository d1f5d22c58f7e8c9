"""Serving latency under bounded loopback load, against the same search done in-process, plus a synthetic
scale run of the sharded IVF index.

    python benchmarks/serve_latency.py --bundle bundles/wordnet [--requests 2000] [--concurrency 1 4 16]
    python benchmarks/serve_latency.py --bundle bundles/wordnet --skip-scale      # only the Serve part
    python benchmarks/serve_latency.py --bundle bundles/wordnet --skip-scale --shards-in-ingress
    python benchmarks/serve_latency.py --scale-only [--scale-labels 2000000 --scale-shards 4]

Serve part: the app of ``serve/app.py`` on a local Ray (127.0.0.1), one real test query per request
(``{"text": ..., "k": 10}``), ``--requests`` requests at each concurrency from an asyncio client in this
process; p50/p99 latency, requests/s and errors. The reference is the same work in this process, one query
at a time: the bundle's query encoder, every shard's faiss search and the top-k merge. ``p50_ratio`` is the
served p50 over the in-process p50 (Serve's overhead: HTTP, proxy, handles, batching waits). With
``--shards-in-ingress`` the ingress searches the index itself (no shard deployments, no hop to them).

Scale part: synthetic clustered unit vectors (real embeddings cluster; uniform random ones are IVF's worst
case and no model's output), split in shards, one IVF index per shard; recall@10 of the merged sharded IVF
top-10 against exact search over all labels, at several nprobe values, with single-query latency.

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import socket
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def percentiles(seconds: list[float]) -> dict:
    ms = np.asarray(seconds) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2)}


def benchmark_queries(bundle, limit: int) -> list[str]:
    """Real test queries of the bundle's dataset (label texts if the prepared dataset is not at hand)."""
    from xmc.data.dataset import PreparedDataset

    prepared = Path(bundle.manifest["config"]["dataset"]["prepared"])
    if (prepared / "manifest.json").is_file():
        texts = PreparedDataset(prepared).texts("test", bundle.manifest["query"]["text_fields"])
    else:
        texts = bundle.load_labels()[1]
    return [t for t in texts if t.strip()][:limit]


def in_process(bundle, queries: list[str], k: int) -> dict:
    """The served computation, one query at a time, without Serve: the bundle's query tower, every shard's
    search and the merge (a :class:`~xmc.index.predictor.Predictor`); and the encoding and the search
    alone."""
    import torch

    from xmc.index.predictor import Predictor

    torch.set_num_threads(1)  # as a Serve replica with num_cpus=1 runs it
    predictor = Predictor.from_bundle(bundle.directory)
    for text in queries[:20]:
        predictor.topk([text], k)
    times, encode, search = [], [], []
    started = time.perf_counter()
    for text in queries:
        t0 = time.perf_counter()
        vector = predictor.encode([text])
        t1 = time.perf_counter()
        predictor.search(vector, k)
        t2 = time.perf_counter()
        times.append(t2 - t0)
        encode.append(t1 - t0)
        search.append(t2 - t1)
    wall = time.perf_counter() - started
    torch.set_num_threads(os.cpu_count() or 1)
    return {"requests": len(queries), **percentiles(times), "requests_per_s": round(len(queries) / wall, 1),
            "encode_p50_ms": percentiles(encode)["p50_ms"], "search_p50_ms": percentiles(search)["p50_ms"]}


def server_timing(header: str) -> dict[str, float]:
    """The milliseconds of a ``Server-Timing`` header, by name."""
    out = {}
    for part in header.split(","):
        name, _, rest = part.strip().partition(";dur=")
        if rest:
            out[name] = float(rest)
    return out


async def http_load(url: str, queries: list[str], total: int, concurrency: int, k: int) -> dict:
    """``total`` POSTs from ``concurrency`` client loops (each waits for its answer before the next)."""
    import aiohttp

    latencies: list[float] = []
    stages: list[dict[str, float]] = []
    errors: list[str] = []
    next_request = 0

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal next_request
        while next_request < total:
            text = queries[next_request % len(queries)]
            next_request += 1
            t0 = time.perf_counter()
            try:
                async with session.post(url, json={"text": text, "k": k}) as reply:
                    body = await reply.json()
                    if reply.status != 200 or len(body["results"][0]) != k:
                        errors.append(f"{reply.status}: {str(body)[:120]}")
                        continue
            except (aiohttp.ClientError, asyncio.TimeoutError, KeyError) as err:
                errors.append(repr(err))
                continue
            latencies.append(time.perf_counter() - t0)
            stages.append(server_timing(reply.headers.get("Server-Timing", "")))

    timeout = aiohttp.ClientTimeout(total=120)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        started = time.perf_counter()
        await asyncio.gather(*[client(session) for _ in range(concurrency)])
        wall = time.perf_counter() - started
    # where a request's time went: the ingress's own stages (its Server-Timing header) and, beyond them,
    # HTTP, the proxy and the hop to the ingress
    breakdown = {}
    if stages and all("ingress" in stage for stage in stages):
        ms = {name: np.array([stage[name] for stage in stages]) for name in stages[0]}
        beyond = np.asarray(latencies) * 1000 - ms["ingress"]
        breakdown = {f"{name}_p50_ms": round(float(np.median(values)), 2) for name, values in ms.items()}
        breakdown["outside_ingress_p50_ms"] = round(float(np.median(beyond)), 2)
    return {"concurrency": concurrency, "requests": total, "errors": len(errors),
            "error_examples": errors[:3], **(percentiles(latencies) if latencies else {}),
            "requests_per_s": round(len(latencies) / wall, 1), **breakdown}


def served(bundle_dir: Path, queries: list[str], total: int, levels: list[int], k: int,
           app_args: dict | None = None) -> list[dict]:
    import ray
    from ray import serve

    sys.path.insert(0, str(REPO))
    from serve.app import app, http_port

    os.environ.setdefault("RAY_SERVE_PROXY_USE_GRPC", "1")  # as scripts/env.sh runs Serve (read at Ray start)
    passed_on = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "no_proxy", "http_proxy", "https_proxy",
                 "RAY_USAGE_STATS_ENABLED")
    env = {key: value for key, value in os.environ.items()
           if key in passed_on or key.startswith("RAY_SERVE_")}  # Serve's own settings, as the shell has them
    ray.init(include_dashboard=False, runtime_env={"env_vars": env}, log_to_driver=False,
             _node_ip_address="127.0.0.1")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(app({"bundle": str(bundle_dir), **(app_args or {})}), name="xmc", route_prefix="/")
        url = f"http://127.0.0.1:{http_port(port)}/v1/predict"
        asyncio.run(http_load(url, queries, 64, 4, k))  # warm-up: batching paths, connections, allocators
        return [asyncio.run(http_load(url, queries, total, level, k)) for level in levels]
    finally:
        serve.shutdown()
        ray.shutdown()


def recall_and_latency(shards: list, vectors: np.ndarray, truth: np.ndarray, k: int, timed: int) -> dict:
    """Recall@k of the merged sharded search against ``truth`` ids, and its latency one query at a time
    over the first ``timed`` queries."""
    from xmc.index.shards import merge_topk

    _, found = merge_topk([shard.search(vectors, k) for shard in shards], k)
    recall = np.mean([len(set(a) & set(b)) / k for a, b in zip(found, truth)])
    single = []
    for row in vectors[:timed]:
        t0 = time.perf_counter()
        merge_topk([shard.search(row[None], k) for shard in shards], k)
        single.append(time.perf_counter() - t0)
    return {"recall@10": round(float(recall), 4), **percentiles(single)}


def index_choices(bundle, queries: list[str], k: int, nprobes: list[int], ef_searches: list[int]) -> dict:
    """On the bundle's real label vectors and real query vectors: recall@k and single-query latency of IVF
    and HNSW shards against the exact shards (what ``ann.kind`` / ``ann.exact_below`` choose between)."""
    from xmc.index.shards import ShardIndex, merge_topk
    from xmc.mining.ann import build_index
    from xmc.mining.config import AnnConfig

    vectors = bundle.load_query_model().query_vectors(queries)
    exact = [bundle.load_shard(number) for number in range(bundle.num_shards)]
    _, truth = merge_topk([shard.search(vectors, k) for shard in exact], k)
    label_vectors = [shard.index.reconstruct_n(0, shard.index.ntotal) for shard in exact]

    def measure(shards: list) -> dict:
        return recall_and_latency(shards, vectors, truth, k, timed=300)

    report = {"queries": len(queries), "flat": measure(exact)}
    for kind, knob, values in (("ivf", "nprobe", nprobes), ("hnsw", "efSearch", ef_searches)):
        t0 = time.perf_counter()
        shards = [ShardIndex(build_index(vecs, AnnConfig(kind=kind)), shard.label_ids)
                  for vecs, shard in zip(label_vectors, exact)]
        built = round(time.perf_counter() - t0, 1)
        rows = []
        for value in values:
            for shard in shards:
                if kind == "ivf":
                    shard.index.nprobe = value
                else:
                    shard.index.hnsw.efSearch = value
            rows.append({knob: value, **measure(shards)})
        report[kind] = {"build_seconds": built, "by_setting": rows}
    return report


def clustered_vectors(rng: np.random.Generator, centers: np.ndarray, count: int, spread: float) -> np.ndarray:
    """``count`` unit vectors, each near a random center (cosine to it about 1/sqrt(1 + spread^2))."""
    dim = centers.shape[1]
    picks = rng.integers(0, len(centers), count)
    out = centers[picks] + rng.standard_normal((count, dim), dtype=np.float32) * (spread / math.sqrt(dim))
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def scale_run(num_labels: int, num_shards: int, dim: int, num_queries: int, nprobes: list[int],
              k: int) -> dict:
    """Sharded IVF vs exact search on synthetic clustered vectors (one shard in memory at a time while
    building)."""
    import faiss

    from xmc.index.shards import ShardIndex, merge_topk, shard_ranges
    from xmc.mining.ann import build_index
    from xmc.mining.config import AnnConfig

    rng = np.random.default_rng(0)
    centers = rng.standard_normal((max(num_labels // 100, 1), dim), dtype=np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    queries = clustered_vectors(rng, centers, num_queries, spread=1.0)
    ranges = shard_ranges(num_labels, num_shards)
    lists = int(math.sqrt(ranges[0][1] - ranges[0][0]))
    config = AnnConfig(kind="ivf", ivf_lists=lists, ivf_train_per_list=64)
    shards, exact_parts, build_seconds = [], [], 0.0
    for start, stop in ranges:
        vectors = clustered_vectors(rng, centers, stop - start, spread=0.8)
        ids = np.arange(start, stop, dtype=np.int64)
        t0 = time.perf_counter()
        shards.append(ShardIndex(build_index(vectors, config), ids))
        build_seconds += time.perf_counter() - t0
        exact = ShardIndex(faiss.IndexFlatIP(dim), ids)
        exact.index.add(vectors)
        exact_parts.append(exact.search(queries, k))
        del vectors, exact
    _, exact_ids = merge_topk(exact_parts, k)
    results = []
    for nprobe in nprobes:
        for shard in shards:
            shard.index.nprobe = nprobe
        results.append({"nprobe": nprobe, **recall_and_latency(shards, queries, exact_ids, k, timed=200)})
    return {"labels": num_labels, "shards": num_shards, "dim": dim, "ivf_lists_per_shard": lists,
            "queries": num_queries, "build_seconds": round(build_seconds, 1), "by_nprobe": results,
            "default_nprobe": AnnConfig().ivf_nprobe}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle",
                        help="bundle of jobs/export.py (e.g. wordnet-reverse-dictionary, 2 shards)")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--skip-scale", action="store_true")
    parser.add_argument("--scale-only", action="store_true")
    parser.add_argument("--scale-labels", type=int, default=2_000_000)
    parser.add_argument("--scale-shards", type=int, default=4)
    parser.add_argument("--scale-dim", type=int, default=384)
    parser.add_argument("--scale-queries", type=int, default=1000)
    parser.add_argument("--nprobe", type=int, nargs="+", default=[8, 16, 32, 64, 128, 256])
    parser.add_argument("--ef-search", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--index-choices", action="store_true",
                        help="also compare exact, IVF and HNSW shards on the bundle's real vectors "
                             "(recall, latency)")
    parser.add_argument("--skip-serve", action="store_true", help="no Serve load test (with --index-choices)")
    parser.add_argument("--shards-in-ingress", action="store_true",
                        help="serve with the index shards in the ingress replica (no shard deployments)")
    args = parser.parse_args()
    report: dict = {"cpus": os.cpu_count()}
    if not args.scale_only:
        if not args.bundle:
            parser.error("--bundle is required unless --scale-only")
        from xmc.index.bundle import Bundle

        bundle = Bundle(Path(args.bundle))
        queries = benchmark_queries(bundle, args.requests)
        report["bundle"] = {"version": bundle.version, "labels": bundle.num_labels,
                            "shards": bundle.num_shards,
                            "indexes": [s["index"] for s in bundle.manifest["shards"]]}
        if args.index_choices:
            report["index_choices"] = index_choices(bundle, queries[:1000], args.k, args.nprobe[:4],
                                                    args.ef_search)
        if not args.skip_serve:
            report["in_process"] = in_process(bundle, queries[:500], args.k)
            app_args = {"shards_in_ingress": args.shards_in_ingress}
            report["served"] = served(bundle.directory, queries, args.requests, args.concurrency, args.k,
                                      app_args)
            report["app"] = app_args
            grpc_proxy = os.environ.get("RAY_SERVE_PROXY_USE_GRPC") == "1"
            report["http"] = ("direct ingress" if os.environ.get("RAY_SERVE_ENABLE_DIRECT_INGRESS") == "1"
                              else "proxy, to the ingress over " + ("grpc" if grpc_proxy else "actor calls"))
            for level in report["served"]:
                if "p50_ms" in level:
                    level["p50_ratio"] = round(level["p50_ms"] / report["in_process"]["p50_ms"], 2)
        # the partial result, printed before the long scale part
        print(json.dumps(report, indent=1), file=sys.stderr, flush=True)
    if not args.skip_scale:
        report["scale"] = scale_run(args.scale_labels, args.scale_shards, args.scale_dim, args.scale_queries,
                                    args.nprobe, args.k)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
