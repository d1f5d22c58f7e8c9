"""How a trained run is exported for serving (kept free of torch imports so loading a config stays cheap)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from xmc.mining.config import AnnConfig


@dataclass(kw_only=True)
class ExportConfig:
    """Args:
        shards: label index shards (shard s holds the labels whose id is s modulo ``shards``), each served
            by its own deployment.
        checkpoint: checkpoint directory name in the run to export ("" = the latest).
        ann: the faiss index built per shard: exact inner product (``flat``) below ``ann.exact_below``
            labels per shard, ``ann.large_kind`` (HNSW) above it, or ``ann.kind`` forces one; nprobe and
            efSearch are stored in the index file. A flat scan reads every label vector for every query,
            which large shards cannot afford at serving latency; ``benchmarks/serve_latency.py
            --index-choices`` measures recall and latency of each kind on a bundle.
        clf_untrained: ``table`` or ``label_text`` overrides the run's ``model.clf_untrained`` (how labels
            without training data are scored on the classifier side; a scoring choice, so no retraining);
            "" keeps the run's.
        calibration: ``auto`` applies the run's ``calibration.json`` (the fused-score settings
            ``jobs/calibrate.py`` chose on the validation hold-out for the exported checkpoint) when the run
            has one; ``off`` keeps the run's own settings.
        de_weight, cold_start_offset, neighbour_weight: override the run's (and its calibration's)
            ``model.de_weight``, ``model.cold_start_offset`` and ``model.neighbour_weight``, e.g. with the
            values calibrated on a held-out run of the same recipe (None keeps them). A neighbour weight above
            0 puts the run's training queries in the bundle (:mod:`xmc.scoring.neighbours`).
        add_labels: labels to add without retraining, in the LF label file layout (``uid``, ``title``,
            ``content`` per line; a path or a storage URI), scored by their text
            (:mod:`xmc.index.label_edits`).
        remove_labels: uids of labels no search may return, one per line (a path or a storage URI).
        workers: processes that build the index shards: 1 builds them one after the other in the export
            job's process; more starts that many Ray tasks (on the cluster the job runs on, else a local
            Ray), each building a share of the shards. Each holds one shard's label vectors at a time.
        cpus_per_worker: CPUs (and threads) each of those tasks takes.
        ray_address: the Ray cluster of the tasks ("" = $RAY_ADDRESS, else a local Ray on 127.0.0.1).
    """

    shards: int = 1
    checkpoint: str = ""
    ann: AnnConfig = field(default_factory=lambda: AnnConfig(exact_below=50_000, large_kind="hnsw"))
    clf_untrained: Literal["", "table", "label_text"] = ""
    calibration: Literal["auto", "off"] = "auto"
    de_weight: float | None = None
    cold_start_offset: float | None = None
    neighbour_weight: float | None = None
    add_labels: str = ""
    remove_labels: str = ""
    workers: int = 1
    cpus_per_worker: float = 1.0
    ray_address: str = ""

    def validate(self) -> None:
        if self.shards < 1:
            raise ValueError(f"shards must be >= 1, got {self.shards}")
        if self.workers < 1 or self.cpus_per_worker <= 0:
            raise ValueError(f"workers must be >= 1 and cpus_per_worker > 0, got {self.workers} and "
                             f"{self.cpus_per_worker}")
