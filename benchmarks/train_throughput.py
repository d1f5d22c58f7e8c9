"""Training throughput: the full step against a plain encoder step on the same batches, in one run.

    python benchmarks/train_throughput.py [--config configs/demo.yaml] [--steps 8] [--set key=value ...]

The full step is :meth:`xmc.training.trainer.Trainer.train_step`: pool building (sampled positives, hard
negatives from a mined shortlist, in-batch fill), encoding the queries and the pool's labels, both heads,
the loss, AdamW on the dense weights and SparseAdam on the pool's classifier rows. The reference is the
same encoder's forward + backward + AdamW on the same batches, with a trivial loss and nothing else, in
two readings of "the same batches":

- ``ratio`` (goal >= 0.8): the reference encodes exactly what the step encodes, the batch's queries and
  its pool's labels; the ratio is the cost of everything this project adds around the encoder (pool,
  heads, loss, sharded table, collectives, optimizers).
- ``ratio_vs_query_encoder``: the reference encodes only the queries, so the ratio also charges the
  method's own extra work, encoding the label pool (a dual encoder must: labels get gradients too).

Prints one JSON object. On a GPU it also reports bf16 autocast and the model FLOPs utilisation (MFU).
``--profile N`` adds a torch.profiler reading of N more full steps: the step's phases (the trainer's
``xmc.*`` ranges: pool, tokens, forward, loss, backward, optimizer) and the operators that take the most
host and device time, in milliseconds per step, to find where a step's time goes beyond the encoder.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

from xmc.config import load_config
from xmc.experiment import ExperimentConfig
from xmc.models.encoder import TextEncoder, autocast
from xmc.training.driver import ensure_prepared, resolve_run
from xmc.training.trainer import Trainer

H100_BF16_DENSE_FLOPS = 989e12


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def encoder_reference(trainer: Trainer, batches: list[np.ndarray],
                      label_pools: list[np.ndarray] | None) -> float:
    """Seconds for a plain encoder forward + backward + AdamW on each query batch (and its pool's labels)."""
    device, dtype, cache = trainer.scoring.device, trainer.scoring.dtype, trainer.data.cache
    encoder = TextEncoder(trainer.scoring.model.encoder.model_dir, trainer.config.encoder.pooling,
                          trainer.config.encoder.group_by_length).to(device).train()
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=1e-5)
    elapsed = 0.0
    for i, batch in enumerate(batches):
        ids, mask = cache.batch("train", batch)
        ids, mask = ids.to(device), mask.to(device)
        sync(device)
        started = time.perf_counter()
        with autocast(device, dtype):
            loss = encoder(ids, mask).float().pow(2).mean()
            if label_pools is not None:
                label_ids, label_mask = cache.batch("labels", label_pools[i])
                loss = loss + encoder(label_ids.to(device), label_mask.to(device)).float().pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sync(device)
        if i > 0:  # the first step warms up allocators and kernels
            elapsed += time.perf_counter() - started
    return elapsed


def full_steps(trainer: Trainer, batches: list[np.ndarray]) -> float:
    """Seconds for :meth:`Trainer.train_step` on each batch."""
    elapsed = 0.0
    for i, batch in enumerate(batches):
        trainer.step_in_epoch = i
        sync(trainer.scoring.device)
        started = time.perf_counter()
        trainer.train_step(batch)
        sync(trainer.scoring.device)
        if i > 0:
            elapsed += time.perf_counter() - started
    return elapsed


def profile_steps(trainer: Trainer, batches: list[np.ndarray], top: int = 12) -> dict:
    """Per-step milliseconds of the trainer's phases and of the costliest operators (host and device)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = trainer.scoring.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    full_steps(trainer, batches[:1])  # warm
    with profile(activities=activities) as prof:
        started = time.perf_counter()
        full_steps(trainer, batches)
        wall = time.perf_counter() - started
    n = len(batches)
    events = prof.key_averages()

    def device_us(event, field: str) -> float:  # renamed from *_cuda_* to *_device_* in torch 2.4
        return float(getattr(event, field.replace("cuda", "device"), getattr(event, field, 0.0)) or 0.0)

    def row(event) -> dict:
        return {"op": event.key, "calls_per_step": event.count / n,
                "cpu_total_ms": event.cpu_time_total / 1e3 / n,
                "self_cpu_ms": event.self_cpu_time_total / 1e3 / n,
                "self_device_ms": device_us(event, "self_cuda_time_total") / 1e3 / n}

    phases: dict[str, float] = {}
    for e in events:  # a range is listed once on the host and, on a GPU, once more as a device annotation
        if e.key.startswith("xmc."):
            phases[e.key] = max(phases.get(e.key, 0.0), round(e.cpu_time_total / 1e3 / n, 2))
    ops = [e for e in events if not e.key.startswith("xmc.")]
    result = {"steps": n, "wall_ms_per_step": wall * 1e3 / n, "phases_host_ms": phases,
              "top_self_cpu": [row(e) for e in sorted(ops, key=lambda e: -e.self_cpu_time_total)[:top]]}
    if cuda:
        result["device_busy_ms_per_step"] = sum(device_us(e, "self_cuda_time_total") for e in ops) / 1e3 / n
        result["top_self_device"] = [row(e) for e in
                                     sorted(ops, key=lambda e: -device_us(e, "self_cuda_time_total"))[:top]]
    return result


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(config: ExperimentConfig, steps: int, profile: int = 0) -> dict:
    config, run_dir = resolve_run(config, "throughput-benchmark")
    ensure_prepared(config)
    trainer = Trainer(config, Path(run_dir) / "unused")
    trainer.epoch = config.mining.start_epoch  # steady state: clustered batches, hard negatives on
    trainer.planner.refresh(trainer.epoch)
    trainer.plan = trainer.planner.plan(trainer.epoch)
    everything = [trainer.plan.batch(i) for i in range(min(steps + 1 + profile, len(trainer.plan)))]
    batches, profiled = everything[: steps + 1], everything[steps + 1:]
    examples = sum(len(b) for b in batches[1:])
    pools = []
    for i, batch in enumerate(batches):
        trainer.step_in_epoch = i
        pools.append(trainer.step_pool(batch).label_ids)
    # interleave the measurements (A B C A B C) so drift in machine speed hits all alike
    half = len(batches) // 2
    full_s = ref_s = query_ref_s = 0.0
    for part in (list(range(half + 1)), [0] + list(range(half + 1, len(batches)))):
        full_s += full_steps(trainer, [batches[i] for i in part])
        ref_s += encoder_reference(trainer, [batches[i] for i in part], [pools[i] for i in part])
        query_ref_s += encoder_reference(trainer, [batches[i] for i in part], None)
    cache, device = trainer.data.cache, trainer.scoring.device
    tokens = sum(int(cache.arrays("train")[1][b].sum()) for b in batches[1:])
    label_tokens = sum(int(cache.arrays("labels")[1][p].sum()) for p in pools[1:])
    result = {
        "device": str(device), "precision": str(trainer.scoring.dtype or torch.float32),
        "threads": torch.get_num_threads(), "steps": len(batches) - 1, "examples": examples,
        "mean_batch": examples / (len(batches) - 1), "query_tokens_per_example": tokens / examples,
        "mean_pool": float(np.mean([len(p) for p in pools[1:]])),
        "label_tokens_per_example": label_tokens / examples,
        "full_step_examples_per_s": examples / full_s,
        "encoder_same_inputs_examples_per_s": examples / ref_s,
        "encoder_queries_only_examples_per_s": examples / query_ref_s,
        "ratio": ref_s / full_s,
        "ratio_vs_query_encoder": query_ref_s / full_s,
        "peak_memory_mb": peak_memory_mb(device),
    }
    if device.type == "cuda":
        params = sum(p.numel() for p in trainer.scoring.model.encoder.parameters())
        # 6 · parameters · tokens for forward + backward of queries and pool labels (attention not counted)
        result["mfu"] = 6 * params * (tokens + label_tokens) / full_s / H100_BF16_DENSE_FLOPS
    if profiled:
        result["profile"] = profile_steps(trainer, profiled)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--precision", choices=["fp32", "bf16"], action="append",
                        help="measure only these (default: both)")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="also profile N more full steps with torch.profiler")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    gpu = torch.cuda.is_available()
    base = ["train.num_workers=0", "train.progress=false", f"train.use_gpu={str(gpu).lower()}",
            *args.overrides]
    report = {"benchmark": "train_throughput", "config": args.config}
    precisions = args.precision or ["fp32", "bf16"]
    for precision in precisions:
        config = load_config(ExperimentConfig, args.config, base + [f"train.precision={precision}"])
        report[precision] = measure(config, args.steps, args.profile)
    report["ratio"] = report[precisions[0]]["ratio"]
    report["ratio_vs_query_encoder"] = report[precisions[0]]["ratio_vs_query_encoder"]
    report["goal_ratio"] = 0.8
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
