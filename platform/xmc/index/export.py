"""Export a trained run as a serving bundle (layout in :mod:`xmc.index.bundle`).

The label vectors are the ones the run's own evaluation ranks with (:meth:`ScoringModel.label_vectors`):
``[de_weight · DE ; CLF]`` per label, plus the cold-start offset column when the model has one
(:mod:`xmc.scoring.fusion`), so an inner product with the query tower's vector is the fused score exactly
as evaluated. A run calibrated by ``jobs/calibrate.py`` is exported with the settings chosen there. Labels
may be added or removed on the way (:mod:`xmc.index.label_edits`): the result is a new bundle version that
Serve hot-swaps to like any other.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from xmc import storage
from xmc.checkpoint import CHECKPOINT_PREFIX
from xmc.config import ConfigError, to_dict
from xmc.evaluation.calibration import read_calibration
from xmc.index.bundle import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    NEIGHBOURS,
    Bundle,
    BundleError,
    file_digests,
    shard_dir,
)
from xmc.index.config import ExportConfig
from xmc.index.label_edits import LabelEdits
from xmc.io import atomic_dir, sha256_file, write_json
from xmc.memory import PhaseMeter
from xmc.mining.ann import resolved_kind
from xmc.models.config import HeadsConfig
from xmc.scoring import fusion
from xmc.scoring.neighbours import training_memory
from xmc.scoring.run import TrainedRun


def scoring_settings(run: TrainedRun, config: ExportConfig) -> HeadsConfig:
    """The run's heads with the fused-score settings the bundle gets: the run's own, then its calibration
    for the exported checkpoint (``calibration: auto``), then explicit overrides."""
    heads = run.config.model
    chosen = read_calibration(run.location, run.checkpoint_name) if config.calibration == "auto" else None
    if chosen:
        fusion.apply(heads, chosen)
    if config.clf_untrained:
        heads.clf_untrained = config.clf_untrained
    if config.de_weight is not None:
        heads.de_weight = config.de_weight
    if config.cold_start_offset is not None:
        heads.cold_start_offset = config.cold_start_offset
    if config.neighbour_weight is not None:
        heads.neighbour_weight = config.neighbour_weight
    try:
        heads.validate()
    except ValueError as err:
        raise ConfigError(f"export: {err}") from None
    return heads


def read_edits(run: TrainedRun, config: ExportConfig) -> LabelEdits:
    """The labels to add and remove (none without files: the run's uids are then not read at all, which an
    export task of a million-label run would otherwise hold for nothing)."""
    if not (config.add_labels or config.remove_labels):
        return LabelEdits()
    return LabelEdits.read(config.add_labels, config.remove_labels, run.dataset.uids("labels"),
                           run.config.dataset.label_text)


def save_backbone(encoder, directory: Path) -> None:
    """The fine-tuned backbone as a complete Hugging Face model directory (safetensors).

    Training drops the backbone's unused [CLS] pooler; it is put back from the pre-trained model so that the
    directory loads anywhere without "newly initialized weights" warnings. Its value never reaches a score.
    """
    from transformers import AutoModel

    complete = AutoModel.from_pretrained(str(encoder.model_dir))
    missing, unexpected = complete.load_state_dict(encoder.backbone.state_dict(), strict=False)
    if unexpected or any(not name.startswith("pooler.") for name in missing):
        raise RuntimeError(f"backbone does not match {encoder.model_dir}: "
                           f"missing {missing}, unexpected {unexpected}")
    complete.save_pretrained(directory, safe_serialization=True)


def export_run(run_location: str | os.PathLike, out: str | os.PathLike, config: ExportConfig,
               shard_reports: list | None = None) -> str:
    """Write the bundle of the run's checkpoint to ``out`` and return its location. Both may be paths or
    storage URIs: a local bundle is written to a temporary directory renamed into place, a remote one is
    uploaded with its manifest last; either way a bundle with a manifest is complete.

    The index shards are written one at a time in this process (``workers`` 1), or by ``workers`` Ray tasks
    each taking a share of them (:func:`export_shards`); no process ever holds more than one shard's label
    vectors. ``shard_reports`` receives, per shard, the seconds and the peak memory of the process that
    built it.
    """
    run = TrainedRun.open(run_location, config.checkpoint)
    out = storage.resolve(out)
    heads = scoring_settings(run, config)
    edits = read_edits(run, config)
    check_shards(run.dataset.num_labels + len(edits.added_uids), config.shards, edits.removed)
    if storage.is_local(out):
        with atomic_dir(storage.local_path(out)) as tmp:
            shards = run_export_shards(run, config, str(tmp))
            write_bundle(run, heads, config, tmp, shards, edits)
    else:
        with tempfile.TemporaryDirectory(prefix="xmc-export-") as tmp:
            shards = run_export_shards(run, config, out)  # each shard goes to storage as soon as it is built
            write_bundle(run, heads, config, Path(tmp), shards, edits)
            storage.upload_dir(tmp, out)  # the manifest last
    if shard_reports is not None:
        shard_reports.extend({key: shard[key] for key in ("shard", "seconds", "peak_rss_mib")}
                             for shard in shards)
    return out


def shard_label_ids(num_label_ids: int, shards: int, shard: int, removed: np.ndarray) -> np.ndarray:
    """The label ids index shard ``shard`` of ``shards`` holds: ``id % shards == shard`` (the training
    workers' split when there are as many shards as workers, else a re-split of it), removed ones left out.
    """
    return np.setdiff1d(np.arange(shard, num_label_ids, shards, dtype=np.int64), removed)


def check_shards(num_label_ids: int, shards: int, removed: np.ndarray) -> None:
    """Refuse a shard count that leaves a shard without labels."""
    held = np.bincount(np.setdiff1d(np.arange(num_label_ids), removed) % max(shards, 1), minlength=shards)
    if shards < 1 or held.min() == 0:
        raise ConfigError(f"shards must be between 1 and the number of labels the bundle holds "
                          f"({num_label_ids - len(removed)}), and leave none empty; got {shards}")


def run_export_shards(run: TrainedRun, config: ExportConfig, target: str) -> list[dict]:
    """Every shard of the bundle written into ``target`` (the bundle's directory, local or a storage URI),
    in this process or by ``config.workers`` Ray tasks; what :func:`export_shards` reports of each, in shard
    order."""
    numbers = list(range(config.shards))
    if config.workers <= 1:
        return export_shards(run.location, config, numbers, target)
    import ray

    from xmc.cluster import init_ray

    init_ray(config.ray_address)
    options = {"num_cpus": config.cpus_per_worker}
    if storage.is_local(target):  # the tasks write into this machine's directory
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = ray.get_runtime_context().get_node_id()
        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(here, soft=False)
    task = ray.remote(export_shards).options(**options)
    shares = [numbers[worker::config.workers] for worker in range(min(config.workers, len(numbers)))]
    reports = [report for share in ray.get([task.remote(run.location, config, share, target)
                                            for share in shares]) for report in share]
    return sorted(reports, key=lambda report: report["shard"])


def export_shards(run_location: str, config: ExportConfig, numbers: list[int], target: str) -> list[dict]:
    """Build and write index shards ``numbers`` of the run's bundle into ``target``, one after the other.

    For each shard a subset :class:`~xmc.scoring.model.ScoringModel` reads the checkpoint's rows of the
    shard's labels only, and the shard's fused label vectors are made a chunk at a time into its index, so
    this process holds one shard's index and nothing else of the labels. Returns per shard its manifest entry,
    the sha256 of its files and of its vectors, and the time and peak memory it took.
    """
    run = TrainedRun.open(run_location, config.checkpoint)
    heads = scoring_settings(run, config)
    edits = read_edits(run, config)
    threads = max(1, int(config.cpus_per_worker)) if config.workers > 1 else None
    if threads:
        _set_threads(threads)
    meter, reports = PhaseMeter(), []
    for number in numbers:
        with meter.phase("export"):
            report = _export_shard(run, heads, config, edits, number, target)
        report.update(meter.take()["export"])
        reports.append(report)
    return reports


def _set_threads(threads: int) -> None:
    import faiss
    import torch

    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)


def _export_shard(run: TrainedRun, heads: HeadsConfig, config: ExportConfig, edits: LabelEdits, number: int,
                  target: str) -> dict:
    import faiss

    from xmc.mining.ann import VectorSource, build_index, stacked

    num_run_labels = run.dataset.num_labels
    ids = shard_label_ids(num_run_labels + len(edits.added_uids), config.shards, number, edits.removed)
    run_ids, added = ids[ids < num_run_labels], ids[ids >= num_run_labels] - num_run_labels
    scoring = run.scoring_model(subset=run_ids)
    source = scoring.own_label_source()
    if len(added):  # labels added after training: scored by their text (xmc.index.label_edits)
        texts = [edits.added_texts[i] for i in added]
        source = stacked(source, VectorSource.of(scoring.text_label_vectors(texts)))
    digest = hashlib.sha256()
    index = build_index(source, config.ann, seed=run.config.train.seed, digest=digest)
    del scoring, source
    relative = shard_dir(number)
    with contextlib.ExitStack() as stack:
        if storage.is_local(target):
            directory = Path(target) / relative
        else:
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="xmc-shard-"))) / relative
        directory.mkdir(parents=True, exist_ok=True)
        faiss.write_index(index, str(directory / "index.faiss"))
        del index
        np.save(directory / "label_ids.npy", ids, allow_pickle=False)
        files = {f"{relative}/{path.name}": sha256_file(path) for path in sorted(directory.iterdir())}
        if not storage.is_local(target):
            storage.upload_dir(directory, storage.join(target, relative))
    return {"shard": number, "digest": digest.hexdigest(), "files": files,
            "entry": {"path": relative, "labels": len(ids), "label_rule": f"id % {config.shards} == {number}",
                      "index": resolved_kind(config.ann, len(ids))}}


def write_bundle(run: TrainedRun, heads: HeadsConfig, config: ExportConfig, directory: Path,
                 shards: list[dict], edits: LabelEdits | None = None) -> None:
    """The bundle's files beside its index shards in ``directory`` (``shards``: what
    :func:`export_shards` reported of them), the manifest last."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from safetensors.torch import save_file

    from xmc.data.tokens import load_tokenizer

    edits = edits or LabelEdits()
    experiment, dataset = run.config, run.dataset
    uids = [str(u) for u in dataset.uids("labels")] + edits.added_uids
    texts = dataset.texts("labels", experiment.dataset.label_text) + edits.added_texts
    digest = hashlib.sha256()
    for shard in shards:
        digest.update(shard["digest"].encode())
    if edits:
        digest.update(edits.removed.tobytes())
        digest.update(len(edits.added_uids).to_bytes(8, "little"))
    version = f"{run.name}-{run.checkpoint_name.removeprefix(CHECKPOINT_PREFIX)}-{digest.hexdigest()[:10]}"
    scoring = run.scoring_model(device="cpu", subset=np.zeros(0, dtype=np.int64))  # the towers, no label
    model = scoring.model
    save_backbone(model.encoder, directory / "encoder")
    load_tokenizer(model.encoder.model_dir).save_pretrained(str(directory / "encoder"))
    query_heads = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()
                   if name.startswith(("de_proj.", "clf_proj."))}
    save_file(query_heads, str(directory / "heads.safetensors"))
    pq.write_table(pa.table({"id": pa.array(np.arange(len(texts)), pa.int64()),
                             "uid": pa.array(uids, pa.string()),
                             "text": pa.array(texts, pa.string())}), directory / "labels.parquet")
    neighbours = write_neighbours(run, heads, config, scoring, directory)
    dim = scoring.dim
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "version": version,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "source": {"run": run.location, "checkpoint": run.checkpoint_name, "dataset": dataset.name},
        "counts": {"labels": sum(shard["entry"]["labels"] for shard in shards), "label_ids": len(texts),
                   "shards": len(shards), "dim": dim},
        "label_edits": edits.describe(),
        "score": fusion.score_formula(heads, scoring.has_classifier),
        "query": {"max_len": experiment.dataset.max_len, "pooling": experiment.encoder.pooling,
                  "text_fields": experiment.dataset.query_text, "batch_size": experiment.encoder.batch_size,
                  "heads": to_dict(heads)},
        "shards": [shard["entry"] for shard in shards],
        **({"neighbours": neighbours} if neighbours else {}),
        "export": to_dict(config),
        "config": to_dict(experiment),
    }
    manifest["files"] = {**file_digests(directory), **{rel: sha for shard in shards
                                                      for rel, sha in shard["files"].items()}}
    manifest["files"] = dict(sorted(manifest["files"].items()))
    write_json(directory / MANIFEST, manifest)


def write_neighbours(run: TrainedRun, heads: HeadsConfig, config: ExportConfig, towers,
                     directory: Path) -> dict | None:
    """The memory of the query-neighbour channel in the bundle's ``neighbours/`` when its weight is above 0:
    the run's training points (those it trained on: a validation hold-out stays out, as it did when the
    weight was chosen) through the query tower ``towers``, and their labels. What the manifest records of it,
    or None."""
    if not heads.neighbour_weight:
        return None
    memory = training_memory(towers, run.token_cache().arrays("train"), run.split.train_rows,
                             run.dataset.label_matrix("train"), config.ann)
    memory.save(directory / NEIGHBOURS)
    return {"path": NEIGHBOURS, "queries": memory.size, "de_dim": towers.de_dim,
            "index": resolved_kind(config.ann, memory.size)}


def check_bundle(location: str | os.PathLike) -> None:
    """Fail loudly if a just-written bundle does not load (all checksums, every shard)."""
    bundle = Bundle(location)
    bundle.verify()
    if sum(int(s["labels"]) for s in bundle.manifest["shards"]) != bundle.num_labels:
        raise BundleError(location, "shard sizes do not add up to the label count")
