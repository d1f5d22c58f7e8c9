"""Export a trained run as a serving bundle (layout in :mod:`xmc.index.bundle`).

The label vectors are the ones the run's own evaluation ranks with (:meth:`Trainer.scoring_vectors`):
``[de_weight · DE ; CLF]`` per label, plus the cold-start offset column when the model has one
(:mod:`xmc.evaluation.calibration`), so an inner product with the query tower's vector is the fused score
exactly as evaluated. A run calibrated by ``jobs/calibrate.py`` is exported with the settings chosen there.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from xmc.config import ConfigError, load_config, to_dict
from xmc.evaluation import calibration
from xmc.index.bundle import FORMAT, FORMAT_VERSION, MANIFEST, BundleError, file_digests, shard_dir
from xmc.index.config import ExportConfig
from xmc.index.shards import shard_ranges
from xmc.io import atomic_dir, write_json

CHECKPOINT_PREFIX = "checkpoint_"
CALIBRATION_FILE = "calibration.json"


def find_checkpoint(run_dir: Path, name: str = "") -> Path:
    """The run's checkpoint directory ``name``, or its latest (names sort by epoch, then step)."""
    found = sorted(p for p in run_dir.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir() and (p / "model.json").is_file())
    if name:
        match = [p for p in found if p.name == name]
        if not match:
            raise ConfigError(f"checkpoint: {name!r} not in {run_dir}; found {[p.name for p in found]}")
        return match[0]
    if not found:
        raise ConfigError(f"--run: {run_dir} holds no checkpoint; expected a run directory of jobs/train.py")
    return found[-1]


def load_trained(run_dir: Path, checkpoint: Path, scratch: Path):
    """A :class:`~xmc.training.trainer.Trainer` in this process (one worker) restored from ``checkpoint``."""
    import torch

    from xmc.experiment import ExperimentConfig
    from xmc.training.trainer import Trainer

    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise ConfigError(f"--run: {config_path} missing; expected a run directory of jobs/train.py")
    config = load_config(ExperimentConfig, config_path)
    config.train.num_workers = 0
    config.train.use_gpu = torch.cuda.is_available()
    config.train.progress = False
    trainer = Trainer(config, scratch)  # scratch: the trainer's own outputs must not touch the run
    trainer.restore(checkpoint)
    trainer.model.eval()
    return trainer


def read_calibration(run_dir: Path, checkpoint: Path) -> dict | None:
    """The run's ``calibration.json`` selection for ``checkpoint``, or None when the run has none.

    A calibration chosen for another checkpoint is an error rather than silently reused: the scores of a
    different checkpoint need their own choice (rerun ``jobs/calibrate.py``, or export with calibration=off).
    """
    path = run_dir / CALIBRATION_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        chosen, calibrated = record["selected"], record["checkpoint"]
        chosen = {key: chosen[key] for key in calibration.SETTINGS}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"{path}: unreadable calibration ({err!r}); rerun jobs/calibrate.py") from None
    if calibrated != checkpoint.name:
        raise ConfigError(f"{path}: chosen for {calibrated}, but the export is of {checkpoint.name}; rerun "
                          f"jobs/calibrate.py --run {run_dir} or export with --set calibration=off")
    return chosen


def save_backbone(encoder, directory: Path) -> None:
    """The fine-tuned backbone as a complete Hugging Face model directory (safetensors).

    Training drops the backbone's unused [CLS] pooler; it is put back from the pre-trained model so that the
    directory loads anywhere without "newly initialized weights" warnings. Its value never reaches a score.
    """
    from transformers import AutoModel

    complete = AutoModel.from_pretrained(str(encoder.model_dir))
    missing, unexpected = complete.load_state_dict(encoder.backbone.state_dict(), strict=False)
    if unexpected or any(not name.startswith("pooler.") for name in missing):
        raise RuntimeError(f"backbone does not match {encoder.model_dir}: missing {missing}, unexpected {unexpected}")
    complete.save_pretrained(directory, safe_serialization=True)


def export_run(run_dir: str | Path, out_dir: str | Path, config: ExportConfig) -> Path:
    """Write the bundle of ``run_dir``'s checkpoint to ``out_dir`` (atomically) and return its path."""
    import faiss
    import pyarrow as pa
    import pyarrow.parquet as pq
    from safetensors.torch import save_file

    from xmc.mining.ann import build_index, resolved_kind
    from xmc.models.encoder import load_tokenizer

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"--run: {run_dir} is not a directory")
    checkpoint = find_checkpoint(run_dir, config.checkpoint)
    with tempfile.TemporaryDirectory(prefix="xmc-export-") as scratch:
        trainer = load_trained(run_dir, checkpoint, Path(scratch))
        scoring = trainer.config.model
        chosen = read_calibration(run_dir, checkpoint) if config.calibration == "auto" else None
        if chosen:
            calibration.apply(scoring, chosen)
        if config.clf_untrained:
            scoring.clf_untrained = config.clf_untrained
        if config.de_weight is not None:
            scoring.de_weight = config.de_weight
        if config.cold_start_offset is not None:
            scoring.cold_start_offset = config.cold_start_offset
        try:
            scoring.validate()
        except ValueError as err:
            raise ConfigError(f"export: {err}") from None
        de, clf = trainer.scoring_vectors()
    vectors = calibration.label_vectors(de, clf, trainer.untrained_labels, scoring.de_weight, scoring.cold_start_offset)
    experiment = trainer.config
    dataset = trainer.dataset
    ranges = shard_ranges(len(vectors), config.shards)
    version = f"{run_dir.name}-{checkpoint.name.removeprefix(CHECKPOINT_PREFIX)}-" \
              f"{hashlib.sha256(vectors.tobytes()).hexdigest()[:10]}"

    with atomic_dir(out_dir) as tmp:
        model = trainer.model
        save_backbone(model.encoder, tmp / "encoder")
        load_tokenizer(model.encoder.model_dir).save_pretrained(str(tmp / "encoder"))
        heads = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()
                 if name.startswith(("de_proj.", "clf_proj."))}
        save_file(heads, str(tmp / "heads.safetensors"))
        texts = dataset.texts("labels", experiment.dataset.label_text)
        pq.write_table(pa.table({"id": pa.array(np.arange(len(texts)), pa.int64()),
                                 "uid": pa.array([str(u) for u in dataset.uids("labels")], pa.string()),
                                 "text": pa.array(texts, pa.string())}), tmp / "labels.parquet")
        shards = []
        for number, (start, stop) in enumerate(ranges):
            directory = tmp / shard_dir(number)
            directory.mkdir(parents=True)
            index = build_index(vectors[start:stop], config.ann, seed=experiment.train.seed)
            if hasattr(faiss, "index_gpu_to_cpu") and type(index).__name__.startswith("Gpu"):
                index = faiss.index_gpu_to_cpu(index)
            faiss.write_index(index, str(directory / "index.faiss"))
            np.save(directory / "label_ids.npy", np.arange(start, stop, dtype=np.int64), allow_pickle=False)
            shards.append({"path": shard_dir(number), "first_label": start, "labels": stop - start,
                           "index": resolved_kind(config.ann, stop - start)})
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "version": version,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "source": {"run": str(run_dir.resolve()), "checkpoint": checkpoint.name, "dataset": dataset.name},
            "counts": {"labels": len(vectors), "shards": len(ranges), "dim": int(vectors.shape[1])},
            "score": score_formula(scoring, clf is not None),
            "query": {"max_len": experiment.dataset.max_len, "pooling": experiment.encoder.pooling,
                      "text_fields": experiment.dataset.query_text, "batch_size": experiment.encoder.batch_size,
                      "heads": to_dict(experiment.model)},
            "shards": shards,
            "export": to_dict(config),
            "config": to_dict(experiment),
        }
        manifest["files"] = file_digests(tmp)
        write_json(tmp / MANIFEST, manifest)
    return out_dir


def score_formula(heads, classifier: bool) -> str:
    """The manifest's one-line description of what an inner product with the index computes."""
    de = "cos_DE" if heads.de_weight == 1.0 else f"{heads.de_weight:g} * cos_DE"
    formula = f"fused: {de} + cos_CLF" if classifier else de
    if calibration.has_offset_column(heads.cold_start_offset):
        formula += f" + {heads.cold_start_offset:g} * [label without training positives]"
    return formula


def check_bundle(out_dir: Path) -> None:
    """Fail loudly if a just-written bundle does not load (all checksums, every shard)."""
    from xmc.index.bundle import Bundle

    bundle = Bundle(out_dir)
    bundle.verify()
    if sum(int(s["labels"]) for s in bundle.manifest["shards"]) != bundle.num_labels:
        raise BundleError(out_dir, "shard sizes do not add up to the label count")
