"""Export a trained run as a serving bundle (layout in :mod:`xmc.index.bundle`).

The label vectors are the ones the run's own evaluation ranks with (:meth:`ScoringModel.label_vectors`):
``[de_weight · DE ; CLF]`` per label, plus the cold-start offset column when the model has one
(:mod:`xmc.scoring.fusion`), so an inner product with the query tower's vector is the fused score exactly
as evaluated. A run calibrated by ``jobs/calibrate.py`` is exported with the settings chosen there.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import numpy as np

from xmc.checkpoint import CHECKPOINT_PREFIX
from xmc.config import ConfigError, to_dict
from xmc.evaluation.calibration import read_calibration
from xmc.index.bundle import FORMAT, FORMAT_VERSION, MANIFEST, Bundle, BundleError, file_digests, shard_dir
from xmc.index.config import ExportConfig
from xmc.index.shards import shard_ranges
from xmc.io import atomic_dir, write_json
from xmc.models.config import HeadsConfig
from xmc.scoring import fusion
from xmc.scoring.run import TrainedRun


def scoring_settings(run: TrainedRun, config: ExportConfig) -> HeadsConfig:
    """The run's heads with the fused-score settings the bundle gets: the run's own, then its calibration
    for the exported checkpoint (``calibration: auto``), then explicit overrides."""
    heads = run.config.model
    chosen = read_calibration(run.directory, run.checkpoint.name) if config.calibration == "auto" else None
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


def export_run(run_dir: str | os.PathLike, out_dir: str | os.PathLike, config: ExportConfig) -> Path:
    """Write the bundle of ``run_dir``'s checkpoint to ``out_dir`` (atomically) and return its path."""
    import faiss
    import pyarrow as pa
    import pyarrow.parquet as pq
    from safetensors.torch import save_file

    from xmc.data.tokens import load_tokenizer
    from xmc.mining.ann import build_index, resolved_kind

    run = TrainedRun.open(run_dir, config.checkpoint)
    out_dir = Path(out_dir)
    heads = scoring_settings(run, config)
    scoring = run.scoring_model()
    vectors = scoring.label_vectors()
    experiment, dataset = run.config, run.dataset
    ranges = shard_ranges(len(vectors), config.shards)
    version = f"{run.directory.name}-{run.checkpoint.name.removeprefix(CHECKPOINT_PREFIX)}-" \
              f"{hashlib.sha256(vectors.tobytes()).hexdigest()[:10]}"

    with atomic_dir(out_dir) as tmp:
        model = scoring.model
        save_backbone(model.encoder, tmp / "encoder")
        load_tokenizer(model.encoder.model_dir).save_pretrained(str(tmp / "encoder"))
        query_heads = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()
                       if name.startswith(("de_proj.", "clf_proj."))}
        save_file(query_heads, str(tmp / "heads.safetensors"))
        texts = dataset.texts("labels", experiment.dataset.label_text)
        pq.write_table(pa.table({"id": pa.array(np.arange(len(texts)), pa.int64()),
                                 "uid": pa.array([str(u) for u in dataset.uids("labels")], pa.string()),
                                 "text": pa.array(texts, pa.string())}), tmp / "labels.parquet")
        shards = []
        for number, (start, stop) in enumerate(ranges):
            directory = tmp / shard_dir(number)
            directory.mkdir(parents=True)
            index = build_index(vectors[start:stop], config.ann, seed=experiment.train.seed)
            faiss.write_index(index, str(directory / "index.faiss"))
            np.save(directory / "label_ids.npy", np.arange(start, stop, dtype=np.int64), allow_pickle=False)
            shards.append({"path": shard_dir(number), "first_label": start, "labels": stop - start,
                           "index": resolved_kind(config.ann, stop - start)})
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "version": version,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "source": {"run": str(run.directory.resolve()), "checkpoint": run.checkpoint.name,
                       "dataset": dataset.name},
            "counts": {"labels": len(vectors), "shards": len(ranges), "dim": int(vectors.shape[1])},
            "score": fusion.score_formula(heads, scoring.has_classifier),
            "query": {"max_len": experiment.dataset.max_len, "pooling": experiment.encoder.pooling,
                      "text_fields": experiment.dataset.query_text,
                      "batch_size": experiment.encoder.batch_size,
                      "heads": to_dict(heads)},
            "shards": shards,
            "export": to_dict(config),
            "config": to_dict(experiment),
        }
        manifest["files"] = file_digests(tmp)
        write_json(tmp / MANIFEST, manifest)
    return out_dir


def check_bundle(out_dir: Path) -> None:
    """Fail loudly if a just-written bundle does not load (all checksums, every shard)."""
    bundle = Bundle(out_dir)
    bundle.verify()
    if sum(int(s["labels"]) for s in bundle.manifest["shards"]) != bundle.num_labels:
        raise BundleError(out_dir, "shard sizes do not add up to the label count")
