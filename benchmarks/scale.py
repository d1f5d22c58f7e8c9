r"""Millions of labels end to end: time and each worker's peak memory in every phase, against the number of
labels and workers, on synthetic data (this measures cost, not quality).

    python benchmarks/scale.py --labels 1300000 --queries 200000 --workers 2
    python benchmarks/scale.py --labels 100000 --baseline-labels 20000 --queries 20000 --workers 1 2

Data: label texts of 2 to 4 words drawn from the tokenizer's whole-word vocabulary, queries made of the
words of 1 to 3 of their labels (popularity skewed like real sets) plus 2 random words, 1,000 test queries;
in the LF layout, prepared by ``jobs/prepare.py``. Encoder: MiniLM cut to its first layer, with its own
weights (``benchmarks/tiny_encoder.py``), so every label vector and table row is as large as the real
encoder's and spread like its vectors (which ANN recall and IVF list sizes depend on) while compute stays
affordable on a CPU.

The pipeline, each step the job a user runs, at every (labels, workers):

1. ``jobs/prepare.py``;
2. ``jobs/train.py`` with the demo recipe (UniDEC: encoder, classifier table, mined hard negatives) on
   ``--workers`` Ray Train CPU workers: epoch 1 (classifier rows from the label texts, ``--steps`` steps, the
   mining refresh for epoch 2, a checkpoint), epoch 2 (steps, the evaluation on the test set, a checkpoint);
3. the same command with one more epoch, which restores the last checkpoint (steps, an evaluation);
4. ``jobs/export.py --shards S`` with ``workers`` = ``--workers`` export tasks (HNSW shards);
5. the bundle in Serve (an ingress and S shard replicas on a local Ray), one query at a time: p50/p99 over
   HTTP, and recall@10 of the served answers against exact search of the bundle's own vectors.

Memory: each training phase's peak RSS per worker comes from the run's ``history.jsonl``, the export's per
task from the job's report, the Serve replicas' from ``/proc``. What the labels cost is measured, not
assumed: the pipeline also runs at ``--baseline-labels`` with the same queries and workers, and a phase's
label state per worker is the growth of its peak per label between the two runs, times the labels. Its
ideal is the label-sized arrays the phase must hold, divided among the processes that hold them, and the
label token ids it needs (:data:`COPIES`); ``ratio`` is measured over ideal.

Prints one JSON object (also written to ``--out``); data, runs, bundles and the encoder live in ``--work``
(``.bench/scale``).
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / ".bench" / "scale"
WIDTH = 384
TEST_QUERIES = 1000
MAX_LEN = 24

#: Label-sized arrays each phase must hold, in rows of WIDTH float32 per label it holds, who holds them
#: ("worker": a training worker holds 1/W of the labels; "shard": an export task or a Serve replica holds one
#: shard, 1/S of them, at a time), and whose token ids it needs (MAX_LEN int32 and a length per label: every
#: label's for a training worker, since a step's pool may hold any label; its own for an export task; none for
#: a Serve replica). UniDEC with MiniLM's width: DE and classifier rows are WIDTH wide, the folded ones 2x.
COPIES = {
    "initialise": (1, "worker", "all", "the classifier rows, set from the label texts a chunk at a time"),
    "steps": (3, "worker", "all", "the classifier rows and SparseAdam's two moments"),
    "mining": (4, "worker", "all", "the table state and the index of the labels' DE vectors"),
    "evaluation": (6, "worker", "all", "the table state, the labels' DE vectors (encoded once) and the fused "
                                       "index (2 rows a label), built a chunk at a time"),
    "checkpoint": (3, "worker", "all", "the table state, written from where it is"),
    "restore": (3, "worker", "all", "the table state, read into place a window at a time"),
    "export": (2, "shard", "held", "one shard's fused index, built a chunk at a time"),
    "serve": (2, "shard", None, "one shard's fused index"),
}
TOKEN_BYTES = MAX_LEN * 4 + 4


# ------------------------------------------------------------------------------------------------------------
# data


def write_lines(path: Path, lines) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with gzip.open(tmp, "wt", encoding="utf-8", compresslevel=1) as handle:
        for line in lines:
            handle.write(line + "\n")
    os.replace(tmp, path)


def synthetic_source(out: Path, num_labels: int, num_queries: int, vocabulary: list[str],
                     seed: int = 0) -> Path:
    """An LF-layout dataset of ``num_labels`` labels and ``num_queries`` training queries (written once)."""
    if (out / "tst.json.gz").is_file():
        return out
    rng = np.random.default_rng(seed)
    words = np.asarray(vocabulary)
    lengths = rng.integers(2, 5, num_labels)
    label_words = np.split(rng.integers(0, len(words), lengths.sum()), np.cumsum(lengths)[:-1])
    write_lines(out / "lbl.json.gz", (json.dumps({"uid": f"L{i}", "title": " ".join(words[w]), "content": ""})
                                      for i, w in enumerate(label_words)))
    # label popularity is skewed like real sets: a few labels are on many queries, most on a few
    popularity = 1.0 / np.arange(1, num_labels + 1) ** 0.6
    popularity /= popularity.sum()

    def points(count: int, prefix: str):
        tags_per_point = rng.integers(1, 4, count)
        drawn = np.split(rng.choice(num_labels, tags_per_point.sum(), p=popularity),
                         np.cumsum(tags_per_point)[:-1])
        noise = rng.integers(0, len(words), (count, 2))
        for i, tags in enumerate(drawn):
            tags = np.unique(tags)
            text = [words[w] for tag in tags for w in label_words[tag]] + list(words[noise[i]])
            rng.shuffle(text)
            yield json.dumps({"uid": f"{prefix}{i}", "title": " ".join(text), "content": "",
                              "target_ind": tags.tolist(), "target_rel": [1.0] * len(tags)})

    write_lines(out / "trn.json.gz", points(num_queries, "q"))
    write_lines(out / "tst.json.gz", points(TEST_QUERIES, "t"))
    return out


def whole_words(model_dir: Path) -> list[str]:
    from xmc.data.tokens import load_tokenizer

    vocab = load_tokenizer(model_dir).get_vocab()
    return sorted(token for token in vocab if token.isalpha() and token.isascii() and len(token) >= 4)


# ------------------------------------------------------------------------------------------------------------
# the jobs


def run_job(args: list[str], log: Path) -> tuple[float, float, str]:
    """Run a job of ``jobs/`` to completion: its wall seconds, its own peak RSS in MiB (the driver process:
    Ray's workers report their own) and its standard output."""
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with open(log, "w") as errors:
        proc = subprocess.Popen([sys.executable, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=errors,
                                text=True)
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"{' '.join(args)} failed (exit status {status}); see {log}")
    return round(time.time() - started, 1), round(usage.ru_maxrss / 1024, 1), out


def train_settings(work: Path, prepared: Path, encoder: Path, workers: int, steps: int, name: str,
                   epochs: int, extra: tuple[str, ...] = ()) -> list[str]:
    threads = max(1, (os.cpu_count() or 1) // workers)
    # IVF above a million labels (mining and evaluation rebuild it): 1,024 lists trained on 39 points each
    # keep a CPU's k-means affordable; the default 4·sqrt(n) lists of 256 points are sized for a GPU
    ann = ["ann.ivf_lists=1024", "ann.ivf_train_per_list=39"]
    settings = [f"dataset.prepared={prepared}", f"encoder.model={encoder}", f"dataset.max_len={MAX_LEN}",
                f"train.num_workers={workers}", f"train.epochs={epochs}",
                f"train.max_steps_per_epoch={steps}", "train.batch_size=128",
                f"train.threads_per_worker={threads}", "train.eval_every=0",
                "train.progress=false", f"run.storage={work / 'runs'}", f"run.name={name}", "eval.top_k=10",
                "mining.shortlist_size=16", *[f"mining.{a}" for a in ann], *[f"eval.{a}" for a in ann]]
    if epochs > 2:
        settings.append("mining.refresh_every=100")  # the resumed run: restore, steps, evaluation
    settings.extend(extra)
    return ["jobs/train.py", "--config", str(REPO / "configs/demo.yaml"),
            *[flag for setting in settings for flag in ("--set", setting)]]


def history_phases(run: Path) -> dict[str, dict]:
    """Per phase the largest seconds and each worker's largest peak over the run's epochs."""
    phases: dict[str, dict] = {}
    for line in (run / "history.jsonl").read_text().splitlines():
        for name, phase in json.loads(line).get("phases", {}).items():
            seen = phases.setdefault(name, {"seconds": 0.0, "peak_rss_mib": phase["peak_rss_mib"]})
            seen["seconds"] = max(seen["seconds"], phase["seconds"])
            seen["peak_rss_mib"] = [max(a, b) for a, b in zip(seen["peak_rss_mib"], phase["peak_rss_mib"])]
    return phases


def pipeline(work: Path, labels: int, queries: int, workers: int, shards: int, steps: int, encoder: Path,
             vocabulary: list[str], serve_queries: int, resume: bool = True, export: bool = True,
             shards_per_replica: int = 1, reuse_runs: bool = False, ef_search: int = 128,
             train_extra: tuple[str, ...] = ()) -> dict:
    """Every step of the module docstring at one (labels, workers) in ``work``; ``serve_queries`` 0 skips
    serving, ``resume`` False the resumed run, ``export`` False the export and serving; ``reuse_runs`` keeps
    a finished run an earlier invocation left in ``work`` (its history gives the training phases; one that
    also resumed serves a call without ``resume``) instead of training again; ``train_extra`` are more
    ``--set`` settings of the training runs."""
    name = f"L{labels}-N{queries}"
    data = work / "data" / name
    source = synthetic_source(data / "source", labels, queries, vocabulary)
    record: dict = {"labels": labels, "queries": queries, "workers": workers, "shards": shards, "seconds": {}}
    seconds, peak, _ = run_job(["jobs/prepare.py", "--source", str(source), "--out", str(data / "prepared"),
                                "--set", f"dataset.max_len={MAX_LEN}", "--set", f"encoder.model={encoder}"],
                               work / "logs" / f"{name}-prepare.log")
    record["seconds"]["prepare"], record["prepare_peak_rss_mib"] = seconds, peak
    run_name = f"{name}-W{workers}"
    run = work / "runs" / run_name
    epochs = 3 if resume else 2
    finished = (run / "history.jsonl").is_file() and \
        len((run / "history.jsonl").read_text().splitlines()) >= epochs
    if reuse_runs and finished:
        record["reused_run"] = str(run)  # its training phases, measured by the invocation that trained it
    else:
        shutil.rmtree(run, ignore_errors=True)  # a fresh run, never one resumed from an earlier invocation
        for label, epochs in (("train", 2), ("resume", 3))[:2 if resume else 1]:
            seconds, _, _ = run_job(train_settings(work, data / "prepared", encoder, workers, steps, run_name,
                                                   epochs, train_extra),
                                    work / "logs" / f"{run_name}-{label}.log")
            record["seconds"][label] = seconds
    record["phases"] = history_phases(run)
    metrics = json.loads((run / "metrics.json").read_text())
    record["test"] = {key: metrics.get(key) for key in ("P@1", "P@5", "R@10")}
    if not export:
        return record
    bundle = work / "bundles" / run_name
    seconds, _, out = run_job(["jobs/export.py", "--run", str(run), "--out", str(bundle), "--shards",
                               str(shards), "--set", f"workers={workers}",
                               "--set", f"ann.hnsw_ef_search={ef_search}"],
                              work / "logs" / f"{run_name}-export.log")
    built = json.loads(out[out.index("{"):])["shards_built"]
    record["seconds"]["export"] = seconds
    record["phases"]["export"] = {"seconds": max(shard["seconds"] for shard in built),
                                  "peak_rss_mib": [max(shard["peak_rss_mib"] for shard in built)]}
    if serve_queries:
        record["serve"] = serve(bundle, data / "prepared", serve_queries,
                                shards_per_replica=shards_per_replica)
        record["phases"]["serve"] = {"seconds": record["serve"]["start_seconds"],
                                     "peak_rss_mib": [max(record["serve"]["shard_peak_rss_mib"])]}
    return record


# ------------------------------------------------------------------------------------------------------------
# serving


def served_queries(prepared: Path, count: int) -> list[str]:
    from xmc.data.dataset import PreparedDataset

    return PreparedDataset(prepared).texts("test")[:count]


def exact_top_k(bundle, vectors: np.ndarray, k: int) -> np.ndarray:
    """The exact top-k ids of ``vectors`` over every shard's own vectors (one shard in memory at a time)."""
    import faiss

    from xmc.index.shards import ShardIndex, merge_topk

    parts = []
    for number in range(bundle.num_shards):
        shard = bundle.load_shard(number)
        index = shard.index
        if isinstance(index, faiss.IndexHNSW):
            index = faiss.downcast_index(index.storage)  # the HNSW's own flat store: the same vectors
        elif isinstance(index, faiss.IndexIVF):
            index.nprobe = index.nlist
        parts.append(ShardIndex(index, shard.label_ids).search(vectors, k))
        del shard, index
    return merge_topk(parts, k)[1]


async def one_at_a_time(url: str, texts: list[str], k: int
                        ) -> tuple[list[float], list[list[int]], int, list[str]]:
    """Each text's latency, answer ids and ``Server-Timing`` header, one request at a time; and the errors."""
    import aiohttp

    latencies, answers, errors, timings = [], [], 0, []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        for text in texts:
            started = time.perf_counter()
            async with session.post(url, json={"text": text, "k": k}) as reply:
                body = await reply.json()
            if reply.status != 200:
                errors += 1
                continue
            latencies.append(time.perf_counter() - started)
            answers.append([hit["id"] for hit in body["results"][0]])
            timings.append(reply.headers.get("Server-Timing", ""))
    return latencies, answers, errors, timings


def replica_peaks() -> dict[str, float]:
    """Peak RSS (MiB) of each Serve replica of the Ray this process started, by deployment."""
    import ray
    from ray.util.state import list_actors

    peaks = {}
    # this Ray's address: another local Ray (a training job started beside the benchmark) makes "auto" fail
    address = ray.get_runtime_context().gcs_address
    for actor in list_actors(address=address, filters=[("state", "=", "ALIVE")], limit=1000):
        if actor.class_name.startswith("ServeReplica:") and actor.pid:
            status = Path(f"/proc/{actor.pid}/status")
            for line in status.read_text().splitlines() if status.exists() else []:
                if line.startswith("VmHWM:"):
                    peaks[actor.class_name.split(":")[-1]] = round(int(line.split()[1]) / 1024, 1)
    return peaks


def serve(bundle_dir: Path, prepared: Path, count: int, k: int = 10, shards_per_replica: int = 1) -> dict:
    """The bundle behind Serve on a local Ray (127.0.0.1): latency at concurrency 1 (and where it goes, from
    the ingress's ``Server-Timing``), recall@k of what it answers against exact search, and each replica's
    peak memory."""
    import ray
    from ray import serve as ray_serve

    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "benchmarks"))
    from serve_latency import server_timing

    from serve.app import app, http_port
    from xmc.index.bundle import Bundle
    from xmc.index.predictor import Predictor

    texts = served_queries(prepared, count + 20)
    bundle = Bundle(bundle_dir)
    query_tower = Predictor.from_bundle(bundle_dir, shards=[], labels=False)
    truth = exact_top_k(bundle, query_tower.encode(texts[20:]), k)
    del query_tower
    passed_on = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "no_proxy", "http_proxy", "https_proxy",
                 "RAY_USAGE_STATS_ENABLED")
    env = {key: value for key, value in os.environ.items()
           if key in passed_on or key.startswith("RAY_SERVE_")}  # Serve's own settings, as the shell has them
    ray.init(include_dashboard=True, dashboard_host="127.0.0.1", runtime_env={"env_vars": env},
             log_to_driver=False, _node_ip_address="127.0.0.1")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    try:
        started = time.time()
        ray_serve.start(http_options={"host": "127.0.0.1", "port": port})
        groups = -(-bundle.num_shards // shards_per_replica)
        ray_serve.run(app({"bundle": str(bundle_dir), "shard_cpus": round(1.0 / groups, 2),
                           "ingress_cpus": 1.0, "shards_per_replica": shards_per_replica}),
                      name="xmc", route_prefix="/")
        start_seconds = round(time.time() - started, 1)
        url = f"http://127.0.0.1:{http_port(port)}/v1/predict"
        asyncio.run(one_at_a_time(url, texts[:20], k))  # warm-up
        latencies, answers, errors, timings = asyncio.run(one_at_a_time(url, texts[20:], k))
        peaks = replica_peaks()
    finally:
        ray_serve.shutdown()
        ray.shutdown()
    ms = np.asarray(latencies) * 1000
    stages = [server_timing(header) for header in timings]
    ingress = np.array([stage["ingress"] for stage in stages])
    breakdown = {f"{name}_p50_ms": round(float(np.median([stage[name] for stage in stages])), 2)
                 for name in stages[0]}
    recall = np.mean([len(set(a) & set(b.tolist())) / k for a, b in zip(answers, truth)])
    return {"queries": len(texts) - 20, "errors": errors, "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2), **breakdown,
            "outside_ingress_p50_ms": round(float(np.median(ms - ingress)), 2),
            "http": "direct ingress" if os.environ.get("RAY_SERVE_ENABLE_DIRECT_INGRESS") == "1" else "proxy",
            "shards_per_replica": shards_per_replica, f"recall@{k}": round(float(recall), 4),
            "index": sorted({s["index"] for s in bundle.manifest["shards"]}), "start_seconds": start_seconds,
            "shard_peak_rss_mib": [peaks[f"IndexShard{n}"] for n in range(groups)],
            "ingress_peak_rss_mib": peaks.get("Ingress")}


# ------------------------------------------------------------------------------------------------------------
# label state


def label_state(records: list[dict], labels: int, baseline: int) -> dict:
    """Per workers and phase: the growth of the largest worker's peak per label from ``baseline`` to
    ``labels`` labels, as the label state of ``labels`` labels, against the ideal of :data:`COPIES`."""
    row_bytes = WIDTH * 4
    out = {}
    for workers in sorted({r["workers"] for r in records}):
        runs = {r["labels"]: r for r in records if r["workers"] == workers}
        if labels not in runs or baseline not in runs:
            continue
        shards = runs[labels]["shards"]
        phases = {}
        for phase, (copies, holder, tokens, what) in COPIES.items():
            if phase not in runs[labels]["phases"] or phase not in runs[baseline]["phases"]:
                continue
            grow = (max(runs[labels]["phases"][phase]["peak_rss_mib"])
                    - max(runs[baseline]["phases"][phase]["peak_rss_mib"])) * 2**20 / (labels - baseline)
            share = 1 / (workers if holder == "worker" else shards)  # of the labels, per holder
            if phase == "serve":  # a replica may hold several shards
                share *= runs[labels]["serve"]["shards_per_replica"]
            ideal = copies * row_bytes * share + TOKEN_BYTES * {"all": 1, "held": share, None: 0}[tokens]
            phases[phase] = {
                "measured_mib": round(grow * labels / 2**20, 1),
                "ideal_mib": round(ideal * labels / 2**20, 1), "ratio": round(grow / ideal, 3),
                "holder": f"1/{workers} of the labels" if holder == "worker" else f"one shard of {shards}",
                "ideal_is": f"{copies} x {WIDTH} floats a label held ({what})"
                            + {"all": ", and every label's token ids", "held": ", and its labels' token ids",
                               None: ""}[tokens]}
        out[str(workers)] = phases
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labels", type=int, default=1_300_000)
    parser.add_argument("--baseline-labels", type=int, default=100_000,
                        help="the second label count, against which the label state is measured")
    parser.add_argument("--queries", type=int, default=200_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5, help="training steps per epoch")
    parser.add_argument("--serve-queries", type=int, default=300, help="0: no serving step")
    parser.add_argument("--shards-per-replica", type=int, default=1, help="index shards per Serve replica")
    parser.add_argument("--serve-only", type=Path, nargs=2, metavar=("BUNDLE", "PREPARED"),
                        help="only the serving step, on a bundle of an earlier run and its prepared dataset")
    parser.add_argument("--ef-search", type=int, default=128,
                        help="the HNSW shards' efSearch (candidates kept per search): recall against latency")
    parser.add_argument("--skip-resume", action="store_true", help="no resumed run (no restore phase)")
    parser.add_argument("--skip-export", action="store_true", help="no export (and so no serving)")
    parser.add_argument("--reuse-runs", action="store_true",
                        help="keep the finished training runs an earlier invocation left in --work (after a "
                             "later step failed): export and serve them again without training")
    parser.add_argument("--set", dest="train_extra", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting of the training runs on top of the benchmark's (repeatable)")
    parser.add_argument("--work", type=Path, default=WORK, help="where data, runs and bundles go")
    parser.add_argument("--out", type=Path, help="where the JSON report is also written (Ray's own output "
                                                 "shares stdout; default WORK/report.json)")
    args = parser.parse_args()
    args.out = args.out or args.work / "report.json"

    sys.path.insert(0, str(REPO / "platform"))
    sys.path.insert(0, str(REPO / "benchmarks"))
    from tiny_encoder import write_first_layers

    from xmc.io import write_json
    from xmc.models.encoder import resolve_model_dir

    if args.serve_only:
        result = serve(*args.serve_only, args.serve_queries, shards_per_replica=args.shards_per_replica)
        write_json(args.out, result)
        print(json.dumps(result, indent=1))
        return 0
    encoder = args.work / "encoder-minilm-layer1"
    if not (encoder / "config.json").is_file():
        write_first_layers(encoder, resolve_model_dir("default"))
    vocabulary = whole_words(encoder)
    report: dict = {"labels": args.labels, "baseline_labels": args.baseline_labels, "queries": args.queries,
                    "steps_per_epoch": args.steps, "width": WIDTH, "shards": args.shards,
                    "cpus": os.cpu_count(), "runs": []}
    for labels in sorted({args.baseline_labels, args.labels}):
        for workers in args.workers:
            record = pipeline(args.work, labels, args.queries, workers, args.shards, args.steps, encoder,
                              vocabulary, args.serve_queries, resume=not args.skip_resume,
                              export=not args.skip_export, shards_per_replica=args.shards_per_replica,
                              reuse_runs=args.reuse_runs, ef_search=args.ef_search,
                              train_extra=tuple(args.train_extra))
            report["runs"].append(record)
            print(json.dumps(record), file=sys.stderr, flush=True)
            write_json(args.out, report)  # what is done so far survives a later failure
    if args.baseline_labels != args.labels:
        report["label_state"] = label_state(report["runs"], args.labels, args.baseline_labels)
    write_json(args.out, report)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
