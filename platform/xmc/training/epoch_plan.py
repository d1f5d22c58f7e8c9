"""What each epoch trains on: mined hard-negative shortlists, clusters of similar queries, the batch plan.

Every ``mining.refresh_every`` epochs from ``mining.start_epoch`` the current model re-encodes the training
queries (each worker a share, then all-gathered: every worker holds all query vectors), searches every query
in every worker's index of the labels it holds (:attr:`~xmc.scoring.model.ScoringModel.own_labels`: never
all of them) and merges the per-worker candidates (:func:`~xmc.mining.ann.sharded_search`) into each
training query's hard-negative shortlist, and re-clusters the queries into batches of similar ones (rank 0,
broadcast). Every worker then builds the same batch plan from the same seed. The query side (query vectors,
shortlists, clusters: O(N)) stays whole on every worker, as the batch plan needs it there; the label side
(O(L)) is split. The trainer makes the refresh for an epoch at the end of the one before, right after its
evaluation, whose label index it searches (:meth:`~xmc.scoring.model.ScoringModel.own_de_index`).
"""

from __future__ import annotations

import logging
import time

import numpy as np

from xmc.distributed import broadcast_array
from xmc.experiment import ExperimentConfig
from xmc.mining.batches import BatchPlan, clustered_plan, random_plan
from xmc.mining.clustering import balanced_clusters
from xmc.mining.shortlist import compute_shortlists
from xmc.scoring.model import ScoringModel
from xmc.training.data import TrainingData

log = logging.getLogger(__name__)


class EpochPlanner:
    def __init__(self, config: ExperimentConfig, data: TrainingData, scoring: ScoringModel):
        self.config, self.data, self.scoring = config, data, scoring
        # [N, shortlist_size] label ids per training query, -1 padded
        self.shortlists: np.ndarray | None = None
        self.clusters: BatchPlan | None = None  # clusters of training rows, one "batch" per cluster
        self.refreshed_for: int | None = None  # the epoch the shortlists and clusters were made for

    def shortlists_for(self, epoch: int) -> np.ndarray | None:
        """The shortlists hard negatives are drawn from in ``epoch`` (none before mining starts)."""
        return self.shortlists if epoch >= self.config.mining.start_epoch else None

    def refresh(self, epoch: int) -> None:
        """Re-encode labels and training queries, recompute shortlists and query clusters for ``epoch``."""
        started = time.time()
        scoring, data, cfg = self.scoring, self.data, self.config.mining
        queries = scoring.encode(scoring.model.embed_de, data.cache.arrays("train"), data.train_rows)
        if scoring.prototypes is not None and self.config.model.centroid_update == "exact":
            text = scoring.own_label_text_vectors()
            scoring.prototypes.set_exact_centroids(data.positives[data.train_rows], queries, text)
            scoring.prototypes_changed()
        index = scoring.own_de_index(cfg.ann, self.config.train.seed)
        shortlists = np.full((data.positives.shape[0], cfg.shortlist_size), -1, dtype=np.int32)
        shortlists[data.train_rows] = compute_shortlists(
            queries, index, scoring.own_labels, scoring.num_labels, data.positives, data.train_rows,
            cfg.shortlist_size, device=scoring.device)
        self.shortlists = shortlists
        self.refreshed_for = epoch
        rank = scoring.rank
        if cfg.cluster_batches:
            plan = None
            if rank == 0:
                rng = np.random.default_rng([self.config.train.seed, epoch, 1])
                size = cfg.cluster_size_at(epoch, self.config.train.batch_size)
                leaves = balanced_clusters(queries, size, rng)
                plan = BatchPlan.from_batches([data.train_rows[leaf] for leaf in leaves])
            self.clusters = BatchPlan(broadcast_array(plan.order if plan else None, scoring.device),
                                      broadcast_array(plan.offsets if plan else None, scoring.device))
        if rank == 0:
            log.info("mining at epoch %d: %d labels, %d queries in %.1fs", epoch, scoring.num_labels,
                     len(queries), time.time() - started)

    def plan(self, epoch: int) -> BatchPlan:
        """The epoch's batches: clustered once mining has started (and clusters exist), else random."""
        cfg = self.config.train
        rng = np.random.default_rng([cfg.seed, epoch, 2])
        if self.clusters is not None and epoch >= self.config.mining.start_epoch:
            clusters = [self.clusters.batch(i) for i in range(len(self.clusters))]
            plan = clustered_plan(clusters, cfg.batch_size, rng)
        else:
            plan = random_plan(self.data.train_rows, cfg.batch_size, rng)
        if cfg.max_steps_per_epoch and len(plan) > cfg.max_steps_per_epoch:
            plan = BatchPlan(plan.order[: plan.offsets[cfg.max_steps_per_epoch]],
                             plan.offsets[: cfg.max_steps_per_epoch + 1])
        return plan

    def state_dict(self) -> dict:
        return {"clusters": None if self.clusters is None else {"order": self.clusters.order,
                                                                "offsets": self.clusters.offsets},
                "shortlists": self.shortlists, "refreshed_for": self.refreshed_for}

    def load_state_dict(self, state: dict) -> None:
        clusters = state["clusters"]
        self.clusters = BatchPlan(clusters["order"], clusters["offsets"]) if clusters else None
        self.shortlists = state["shortlists"]
        self.refreshed_for = state.get("refreshed_for")  # absent from checkpoints written before it existed
