"""Export a trained run as a serving bundle (layout in :mod:`xmc.index.bundle`).

The label vectors are the ones the run's own evaluation ranks with (:meth:`ScoringModel.label_vectors`):
``[de_weight · DE ; CLF]`` per label, plus the cold-start offset column when the model has one
(:mod:`xmc.scoring.fusion`), so an inner product with the query tower's vector is the fused score exactly
as evaluated. A run calibrated by ``jobs/calibrate.py`` is exported with the settings chosen there. Labels
may be added or removed on the way (:mod:`xmc.index.label_edits`): the result is a new bundle version that
Serve hot-swaps to like any other.
"""

from __future__ import annotations

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
from xmc.index.bundle import FORMAT, FORMAT_VERSION, MANIFEST, Bundle, BundleError, file_digests, shard_dir
from xmc.index.config import ExportConfig
from xmc.index.label_edits import LabelEdits
from xmc.index.shards import shard_ranges
from xmc.io import atomic_dir, write_json
from xmc.models.config import HeadsConfig
from xmc.scoring import fusion
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
    try:
        heads.validate()
    except ValueError as err:
        raise ConfigError(f"export: {err}") from None
    return heads


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


def export_run(run_location: str | os.PathLike, out: str | os.PathLike, config: ExportConfig) -> str:
    """Write the bundle of the run's checkpoint to ``out`` and return its location. Both may be paths or
    storage URIs: a local bundle is written to a temporary directory renamed into place, a remote one is
    uploaded with its manifest last; either way a bundle with a manifest is complete."""
    run = TrainedRun.open(run_location, config.checkpoint)
    out = storage.resolve(out)
    heads = scoring_settings(run, config)
    edits = LabelEdits.read(config.add_labels, config.remove_labels, run.dataset.uids("labels"),
                            run.config.dataset.label_text)
    scoring = run.scoring_model()
    if storage.is_local(out):
        with atomic_dir(storage.local_path(out)) as tmp:
            write_bundle(run, scoring, heads, config, tmp, edits)
    else:
        with tempfile.TemporaryDirectory(prefix="xmc-export-") as tmp:
            write_bundle(run, scoring, heads, config, Path(tmp), edits)
            storage.upload_dir(tmp, out)
    return out


def write_bundle(run: TrainedRun, scoring, heads: HeadsConfig, config: ExportConfig, directory: Path,
                 edits: LabelEdits | None = None) -> None:
    """The bundle's files in ``directory`` (manifest last)."""
    import faiss
    import pyarrow as pa
    import pyarrow.parquet as pq
    from safetensors.torch import save_file

    from xmc.data.tokens import load_tokenizer
    from xmc.mining.ann import build_index, resolved_kind

    edits = edits or LabelEdits()
    experiment, dataset = run.config, run.dataset
    vectors = scoring.label_vectors()
    uids = [str(u) for u in dataset.uids("labels")] + edits.added_uids
    texts = dataset.texts("labels", experiment.dataset.label_text) + edits.added_texts
    if edits.added_uids:
        vectors = np.concatenate([vectors, scoring.text_label_vectors(edits.added_texts)])
    indexed = np.setdiff1d(np.arange(len(vectors)), edits.removed)  # the ids a search may return
    ranges = shard_ranges(len(indexed), config.shards)
    digest = hashlib.sha256(vectors[indexed].tobytes())
    if edits:
        digest.update(indexed.tobytes())
    version = f"{run.name}-{run.checkpoint_name.removeprefix(CHECKPOINT_PREFIX)}-{digest.hexdigest()[:10]}"
    model = scoring.model
    save_backbone(model.encoder, directory / "encoder")
    load_tokenizer(model.encoder.model_dir).save_pretrained(str(directory / "encoder"))
    query_heads = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()
                   if name.startswith(("de_proj.", "clf_proj."))}
    save_file(query_heads, str(directory / "heads.safetensors"))
    pq.write_table(pa.table({"id": pa.array(np.arange(len(texts)), pa.int64()),
                             "uid": pa.array(uids, pa.string()),
                             "text": pa.array(texts, pa.string())}), directory / "labels.parquet")
    shards = []
    for number, (start, stop) in enumerate(ranges):
        shard = directory / shard_dir(number)
        shard.mkdir(parents=True)
        ids = indexed[start:stop]
        index = build_index(vectors[ids], config.ann, seed=experiment.train.seed)
        faiss.write_index(index, str(shard / "index.faiss"))
        np.save(shard / "label_ids.npy", ids.astype(np.int64), allow_pickle=False)
        shards.append({"path": shard_dir(number), "first_label": int(ids[0]), "labels": len(ids),
                       "index": resolved_kind(config.ann, len(ids))})
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "version": version,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "source": {"run": run.location, "checkpoint": run.checkpoint_name, "dataset": dataset.name},
        "counts": {"labels": len(indexed), "label_ids": len(vectors), "shards": len(ranges),
                   "dim": int(vectors.shape[1])},
        "label_edits": edits.describe(),
        "score": fusion.score_formula(heads, scoring.has_classifier),
        "query": {"max_len": experiment.dataset.max_len, "pooling": experiment.encoder.pooling,
                  "text_fields": experiment.dataset.query_text, "batch_size": experiment.encoder.batch_size,
                  "heads": to_dict(heads)},
        "shards": shards,
        "export": to_dict(config),
        "config": to_dict(experiment),
    }
    manifest["files"] = file_digests(directory)
    write_json(directory / MANIFEST, manifest)


def check_bundle(location: str | os.PathLike) -> None:
    """Fail loudly if a just-written bundle does not load (all checksums, every shard)."""
    bundle = Bundle(location)
    bundle.verify()
    if sum(int(s["labels"]) for s in bundle.manifest["shards"]) != bundle.num_labels:
        raise BundleError(location, "shard sizes do not add up to the label count")
