"""The per-worker training loop: the same code on 1 or N workers, CPU or GPU.

One step (:meth:`Trainer.train_step`):

1. every worker builds the same label pool from the same global batch (the pool RNG is seeded by
   (seed, epoch, step)) and takes its own slice of the batch's queries;
2. each worker encodes its queries and a 1/N share of the pool's labels in a single forward call of the
   DDP-wrapped model; label embeddings are all-gathered with gradients, so every worker scores its queries
   against the whole pool;
3. classifier rows of the pool come from the label-sharded table (one all-reduce of ``[pool, dim]``);
4. ``loss = λ·L_DE + (1 − λ)·L_CLF``; DDP averages the dense gradients, the table averages its sparse
   pool-row gradients, AdamW and SparseAdam step.

Every ``mining.refresh_every`` epochs from ``mining.start_epoch`` the model re-encodes all labels and
training queries (each worker a share, then all-gather), rebuilds the label index, recomputes every
query's hard-negative shortlist, and re-clusters the queries into batches.

State that a resumed run needs (model, optimizers, epoch/step, the epoch's batch plan, clusters,
shortlists, running loss, RNG states) is checkpointed through ``ray.train.report`` at epoch ends (and every
``train.checkpoint_every_steps`` steps), without pickle (:mod:`xmc.training.state_io`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.profiler import record_function

from xmc.config import resolve_path
from xmc.data.config import split_validation
from xmc.data.dataset import PreparedDataset
from xmc.evaluation import calibration
from xmc.evaluation.evaluator import evaluate_predictions
from xmc.evaluation.predictions import save_predictions
from xmc.evaluation.predictor import predict_topk
from xmc.experiment import ExperimentConfig
from xmc.losses.criteria import make_criterion
from xmc.losses.triplet import prototype_regularizer
from xmc.mining.ann import build_index
from xmc.mining.batches import BatchPlan, clustered_plan, local_slice, random_plan
from xmc.mining.clustering import balanced_clusters
from xmc.mining.shortlist import compute_shortlists
from xmc.models.encoder import TextEncoder, encode_tokens, resolve_model_dir
from xmc.models.label_table import ShardedLabelTable
from xmc.models.prototypes import CentroidStore
from xmc.models.xmc_model import XMCModel
from xmc.training.distributed import (all_gather_with_grad, broadcast_array, gather_rows, mean_over_workers,
                                      my_share, rank_and_world)
from xmc.training.gradcache import cached_step, chunk_bounds
from xmc.training.pool import LabelPool, build_label_pool
from xmc.training.reporting import RunReporter
from xmc.training.state_io import load_state, rng_state, save_state, set_rng_state

log = logging.getLogger(__name__)

# Fault injection for the retry test: crash the worker once when this global step is reached.
FAIL_AT_STEP_ENV = "XMC_TEST_FAIL_AT_STEP"
FAIL_MARKER_ENV = "XMC_TEST_FAIL_MARKER"


def lr_factor(progress: float, warmup_epochs: float, total_epochs: float) -> float:
    """Linear warm-up to 1 over ``warmup_epochs``, then linear decay to 0 at ``total_epochs``."""
    if warmup_epochs > 0 and progress < warmup_epochs:
        return max(progress / warmup_epochs, 1e-3)
    remaining = total_epochs - warmup_epochs
    return max(0.0, (total_epochs - progress) / remaining) if remaining > 0 else 1.0


def _no_decay(name: str) -> bool:
    return name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name or ".norm" in name


def _in_ray_train() -> bool:
    try:
        import ray.train

        ray.train.get_context()
        return True
    except Exception:  # not inside a Ray Train worker or local-mode run
        return False


def _device(use_gpu: bool) -> torch.device:
    if use_gpu and _in_ray_train():
        import ray.train.torch

        return ray.train.torch.get_device()
    return torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")


PLACEMENT_GROUP_FILE = "placement_group.txt"


def record_placement_group(run_dir: Path) -> None:
    """Write the id of this worker group's Ray placement group into the run directory.

    A Tune trial stopped early by ASHA is killed, and Ray Train frees its workers' placement group only
    through a watcher that needs the dashboard's State API; :func:`xmc.tuning.sweep.release_placement_groups`
    uses these ids to free what such runs left reserved.
    """
    try:
        import ray
        import ray.util

        if not ray.is_initialized():  # local mode, export: asking would start a Ray just to answer None
            return
        group = ray.util.get_current_placement_group()
    except Exception:  # no Ray: nothing reserved
        return
    if group is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / PLACEMENT_GROUP_FILE).write_text(group.id.hex() + "\n")


class Trainer:
    """Builds everything a worker needs from the config and runs (or resumes) the training loop."""

    def __init__(self, config: ExperimentConfig, run_dir: Path):
        self.config = config
        self.run_dir = Path(run_dir)
        self.rank, self.world = rank_and_world()
        cfg = config.train
        self.device = _device(cfg.use_gpu)
        threads = cfg.threads_per_worker or max(1, (os.cpu_count() or 1) // max(cfg.num_workers, 1))
        torch.set_num_threads(threads)
        import faiss  # mining and evaluation search with faiss's own OpenMP pool: the same bound

        faiss.omp_set_num_threads(threads)
        self.autocast_dtype = (torch.bfloat16 if cfg.precision == "bf16" or
                               (cfg.precision == "auto" and self.device.type == "cuda") else None)

        self.dataset = PreparedDataset(resolve_path(config.dataset.prepared))
        model_dir = resolve_model_dir(config.encoder.model)
        self.cache = self.dataset.token_cache(model_dir, config.dataset.max_len, config.dataset.query_text,
                                              config.dataset.label_text, progress=self.rank == 0 and cfg.progress)
        self.positives = self.dataset.label_matrix("train")
        labelled = np.flatnonzero(np.diff(self.positives.indptr) > 0)
        # a validation hold-out never enters training: not its batches, shortlists, clusters or label counts
        self.train_rows, self.validation_rows = split_validation(labelled, config.dataset.validation_fraction,
                                                                 config.dataset.validation_seed)
        self.propensity_rows = self.train_rows if len(self.validation_rows) else None
        self.num_labels = self.dataset.num_labels
        self.label_weights = self.dataset.inverse_propensity(config.dataset.propensity_a, config.dataset.propensity_b,
                                                             self.propensity_rows)
        # labels no training query is tagged with: the classifier never sees them as positives
        self.untrained_labels = np.flatnonzero(self.dataset.train_label_counts(self.train_rows) == 0)

        torch.manual_seed(cfg.seed)
        self.model = XMCModel(TextEncoder(model_dir, config.encoder.pooling, config.encoder.group_by_length),
                              config.model).to(self.device)
        self.model.train()  # from_pretrained returns the backbone in eval mode (dropout off)
        self.table = (ShardedLabelTable(self.num_labels, self.model.clf_dim, self.rank, self.world).to(self.device)
                      if config.model.classifier else None)
        self.ddp_model = self.model
        if self.world > 1:
            import ray.train.torch

            self.ddp_model = ray.train.torch.prepare_model(self.model, move_to_device=False)
        self.optimizer = torch.optim.AdamW(self._param_groups(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.table_optimizer = (torch.optim.SparseAdam(self.table.parameters(), lr=cfg.classifier_lr)
                                if self.table is not None else None)
        # PRIME prototypes: free vectors (one per cluster of labels, sparse updates) and label centroids
        self.free_table = self.free_optimizer = self.centroids = None
        self.free_of: np.ndarray | None = None  # label -> free-vector cluster
        if config.model.prototypes:
            num_free = config.model.free_vectors or 2 ** max(0, round(math.log2(max(self.num_labels / 2, 1))))
            self.free_table = ShardedLabelTable(num_free, self.model.de_dim, self.rank, self.world).to(self.device)
            self.free_optimizer = torch.optim.SparseAdam(self.free_table.parameters(), lr=cfg.prototype_lr)
            self.centroids = CentroidStore(self.num_labels, self.model.de_dim, self.rank, self.world, self.device)
        for optimizer in self._optimizers():
            for group in optimizer.param_groups:
                group["base_lr"] = group["lr"]

        # loop state (checkpointed)
        self.epoch = 0
        self.step_in_epoch = 0
        self.global_step = 0
        self.plan: BatchPlan | None = None
        self.clusters: BatchPlan | None = None
        self.shortlists: np.ndarray | None = None
        self.loss_sum = 0.0
        self.loss_count = 0
        self.reported: dict = {}  # what the last checkpoint reported, so a finished run can say it again
        self._label_text: tuple[int, np.ndarray] | None = None  # (global step, label DE embeddings)
        self.epoch_started = time.time()
        self.reporter = RunReporter(self.run_dir, enabled=self.rank == 0)
        self.final_predictions: tuple[np.ndarray, np.ndarray] | None = None
        if self.rank == 0:
            record_placement_group(self.run_dir)

    # ------------------------------------------------------------------------------------------------------
    # setup

    def _param_groups(self) -> list[dict]:
        cfg = self.config.train
        groups = {key: [] for key in ("enc", "enc_nd", "head", "head_nd")}
        for name, param in self.model.named_parameters():
            head = not name.startswith("encoder.")
            groups[("head" if head else "enc") + ("_nd" if _no_decay(name) else "")].append(param)
        head_lr = cfg.lr * cfg.head_lr_multiplier
        return [
            {"params": groups["enc"], "lr": cfg.lr, "weight_decay": cfg.weight_decay},
            {"params": groups["enc_nd"], "lr": cfg.lr, "weight_decay": 0.0},
            {"params": groups["head"], "lr": head_lr, "weight_decay": cfg.weight_decay},
            {"params": groups["head_nd"], "lr": head_lr, "weight_decay": 0.0},
        ]

    def _optimizers(self) -> list[torch.optim.Optimizer]:
        return [o for o in (self.optimizer, self.table_optimizer, self.free_optimizer) if o is not None]

    def _sharded_tables(self) -> dict[str, tuple[ShardedLabelTable, torch.optim.Optimizer]]:
        tables = {}
        if self.table is not None:
            tables["table"] = (self.table, self.table_optimizer)
        if self.free_table is not None:
            tables["free"] = (self.free_table, self.free_optimizer)
        return tables

    def _progress_bar(self, total: int, desc: str):
        enabled = self.rank == 0 and self.config.train.progress
        if enabled and self.world > 1:
            from ray.experimental.tqdm_ray import tqdm as ray_tqdm

            return ray_tqdm(total=total, desc=desc)
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, disable=not enabled, mininterval=5.0, unit="step")

    @contextlib.contextmanager
    def _eval_mode(self):
        was_training = self.model.training
        self.model.eval()
        try:
            yield
        finally:
            self.model.train(was_training)

    @torch.no_grad()
    def _encode(self, split: str, rows: np.ndarray, embed) -> np.ndarray:
        """Encode ``rows`` of a split with ``embed`` (eval mode), each worker a share; every worker gets all."""
        ids, lengths = self.cache.arrays(split)
        mine = my_share(rows, self.rank, self.world)
        with self._eval_mode(), torch.inference_mode():
            local = encode_tokens(embed, ids, lengths, batch_size=self.config.encoder.batch_size,
                                  device=self.device, dtype=self.autocast_dtype or torch.float32, rows=mine,
                                  progress=False)
        return gather_rows(local, self.device)

    def label_text_vectors(self) -> np.ndarray:
        """DE embeddings of every label's text under the current weights (every worker gets all).

        An epoch's evaluation and the next epoch's mining encode the same weights: the second call reuses
        the first's result instead of encoding all L labels again. Kept only until the next training step
        (:meth:`fit` drops it).
        """
        if self._label_text is not None and self._label_text[0] == self.global_step:
            return self._label_text[1]
        labels = self._encode("labels", np.arange(self.num_labels), self.model.embed_de)
        self._label_text = (self.global_step, labels)
        return labels

    def initialise_table_from_label_text(self) -> None:
        """``clf_init: label_text``: each worker encodes the labels it owns through the classifier head."""
        ids, lengths = self.cache.arrays("labels")
        with self._eval_mode(), torch.inference_mode():
            rows = encode_tokens(self.model.embed_clf, ids, lengths, batch_size=self.config.encoder.batch_size,
                                 device=self.device, dtype=self.autocast_dtype or torch.float32,
                                 rows=self.table.owned, progress=False)
        with torch.no_grad():
            self.table.rows.weight.copy_(torch.from_numpy(rows).to(self.device))

    def initialise_prototypes(self) -> None:
        """Free-vector clusters and initial values from the label texts; centroids from training queries."""
        labels = self._encode("labels", np.arange(self.num_labels), self.model.embed_de)
        queries = self._encode("train", self.train_rows, self.model.embed_de)
        num_free = self.free_table.num_labels
        free_of = None
        if self.rank == 0:
            rng = np.random.default_rng([self.config.train.seed, 0, 4])
            leaves = balanced_clusters(labels, max(1, self.num_labels // num_free), rng)
            free_of = np.zeros(self.num_labels, dtype=np.int64)
            for cluster, leaf in enumerate(leaves):
                free_of[leaf] = cluster % num_free
        self.free_of = broadcast_array(free_of, self.device)
        means = np.zeros((num_free, labels.shape[1]), dtype=np.float32)
        np.add.at(means, self.free_of, labels)  # a free vector starts as its cluster's mean label embedding
        means /= np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
        with torch.no_grad():
            self.free_table.rows.weight.copy_(torch.from_numpy(means[self.free_table.owned]).to(self.device))
        self._set_exact_centroids(queries, labels)

    def _set_exact_centroids(self, queries: np.ndarray, labels: np.ndarray) -> None:
        by_label = self.positives[self.train_rows][:, self.centroids.owned].T.tocsr()
        self.centroids.set_exact(by_label, queries, labels)

    def label_vectors(self, text_vectors: np.ndarray) -> np.ndarray:
        """The DE-side vector each label is scored by: its prototype with prototypes on, else its text embedding."""
        if self.centroids is None:
            return text_vectors
        ids = torch.arange(self.num_labels, device=self.device)
        with torch.no_grad():
            free = self.free_table(torch.from_numpy(self.free_of).to(self.device))
            centroids = self.centroids.lookup(ids)
        out = np.empty_like(text_vectors)
        with self._eval_mode(), torch.inference_mode():
            for start in range(0, self.num_labels, 4096):
                stop = start + 4096
                text = torch.from_numpy(text_vectors[start:stop]).to(self.device)
                out[start:stop] = self.model.lpn(text, free[start:stop], centroids[start:stop]).float().cpu().numpy()
        return out

    # ------------------------------------------------------------------------------------------------------
    # mining and batches

    def refresh_mining(self) -> None:
        """Re-encode labels and training queries, recompute shortlists and query clusters."""
        started = time.time()
        labels = self.label_text_vectors()
        queries = self._encode("train", self.train_rows, self.model.embed_de)
        cfg = self.config.mining
        if self.centroids is not None and self.config.model.centroid_update == "exact":
            self._set_exact_centroids(queries, labels)
        labels = self.label_vectors(labels)
        index = build_index(labels, cfg.ann, seed=self.config.train.seed, device=self.device)
        mine = my_share(np.arange(len(self.train_rows)), self.rank, self.world)
        local = compute_shortlists(queries[mine], labels, self.positives, self.train_rows[mine],
                                   cfg.shortlist_size, cfg.ann, index=index)
        shortlists = np.full((self.positives.shape[0], cfg.shortlist_size), -1, dtype=np.int32)
        shortlists[self.train_rows] = gather_rows(local, self.device)
        self.shortlists = shortlists
        if cfg.cluster_batches:
            plan = None
            if self.rank == 0:
                rng = np.random.default_rng([self.config.train.seed, self.epoch, 1])
                size = cfg.cluster_size_at(self.epoch, self.config.train.batch_size)
                leaves = balanced_clusters(queries, size, rng)
                plan = BatchPlan.from_batches([self.train_rows[leaf] for leaf in leaves])
            order = broadcast_array(plan.order if plan else None, self.device)
            offsets = broadcast_array(plan.offsets if plan else None, self.device)
            self.clusters = BatchPlan(order, offsets)
        if self.rank == 0:
            log.info("mining at epoch %d: %d labels, %d queries in %.1fs", self.epoch, len(labels), len(queries),
                     time.time() - started)

    def plan_epoch(self) -> BatchPlan:
        cfg = self.config.train
        rng = np.random.default_rng([cfg.seed, self.epoch, 2])
        if self.clusters is not None and self.epoch >= self.config.mining.start_epoch:
            clusters = [self.clusters.batch(i) for i in range(len(self.clusters))]
            plan = clustered_plan(clusters, cfg.batch_size, rng)
        else:
            plan = random_plan(self.train_rows, cfg.batch_size, rng)
        if cfg.max_steps_per_epoch and len(plan) > cfg.max_steps_per_epoch:
            plan = BatchPlan(plan.order[: plan.offsets[cfg.max_steps_per_epoch]],
                             plan.offsets[: cfg.max_steps_per_epoch + 1])
        return plan

    # ------------------------------------------------------------------------------------------------------
    # one step

    def _set_learning_rates(self) -> None:
        progress = self.epoch + self.step_in_epoch / max(len(self.plan), 1)
        factor = lr_factor(progress, self.config.train.warmup_epochs, self.config.train.epochs)
        for optimizer in self._optimizers():
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * factor

    def step_pool(self, batch: np.ndarray) -> LabelPool:
        """The current step's label pool; seeded by (seed, epoch, step) so every worker builds the same."""
        cfg = self.config
        rng = np.random.default_rng([cfg.train.seed, self.epoch, self.step_in_epoch, 3])
        mining_active = self.epoch >= cfg.mining.start_epoch
        return build_label_pool(batch, self.positives, cfg.pool, rng, self.shortlists if mining_active else None,
                                self.label_weights)

    def _step_generator(self) -> torch.Generator:
        """Randomness of the loss (positive draws); per (seed, epoch, step, worker), so a resumed run repeats it."""
        seed = (self.config.train.seed * 1_000_003 + self.epoch * 10_007 + self.step_in_epoch) * 64 + self.rank
        return torch.Generator(device=self.device).manual_seed(seed)

    def _loss(self, out: dict[str, torch.Tensor], label_text: torch.Tensor, label_proto: torch.Tensor | None,
              pool_ids: torch.Tensor, targets: torch.Tensor, row_mask: torch.Tensor) -> torch.Tensor:
        """The configured objective on cosine scores of the batch's queries against the pool's labels.

        DE side: the criterion on prototype scores (or text scores without prototypes), plus, with
        prototypes, ``inter_weight`` × the criterion on text scores and ``reg_weight`` × the prototype
        regulariser; ``dual_weight`` × the label→query criterion on text scores. Classifier side (when
        present): the classifier criterion; the two sides are mixed by λ.
        """
        cfg = self.config.loss
        scale = self.config.model.scale
        generator = self._step_generator()
        weights = (torch.from_numpy(self.label_weights).to(self.device)[pool_ids].float()
                   if self.config.pool.positive_sampling == "inverse_propensity" else None)
        criterion = make_criterion(cfg.de, cfg, scale, generator, weights)
        query = out["query_de"]
        text = query @ label_text.T
        if label_proto is not None:
            proto = query @ label_proto.T
            loss = criterion(proto, targets, row_mask)
            if cfg.inter_weight:
                loss = loss + cfg.inter_weight * criterion(text, targets, row_mask)
            if cfg.reg_weight:
                loss = loss + cfg.reg_weight * prototype_regularizer(text, proto, targets, row_mask,
                                                                     cfg.triplet_negatives, cfg.reg_margin, generator)
        else:
            loss = criterion(text, targets, row_mask)
        if cfg.dual_weight:
            dual = make_criterion(cfg.de, cfg, scale, generator)
            loss = loss + cfg.dual_weight * dual(text.T, targets.T, targets.any(dim=0))
        if self.table is None:
            return loss
        rows = self.table(pool_ids)
        rows = F.normalize(F.dropout(rows, self.config.model.dropout, self.model.training), dim=-1)
        clf = make_criterion(cfg.clf or cfg.de, cfg, scale, generator, weights)
        clf_loss = clf(out["query_clf"] @ rows.T, targets, row_mask)
        return cfg.lambda_de * loss + (1.0 - cfg.lambda_de) * clf_loss

    def _apply_gradients(self) -> None:
        for table, _ in self._sharded_tables().values():
            table.average_gradients()
        if self.config.train.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.train.max_grad_norm)
        self._set_learning_rates()
        for optimizer in self._optimizers():
            optimizer.step()

    def train_step(self, batch: np.ndarray) -> float:
        if self.config.pool.all_labels:
            return self._all_labels_step(batch)
        cfg = self.config
        with record_function("xmc.pool"):
            pool = self.step_pool(batch)
            positions = local_slice(np.arange(len(batch)), self.rank, self.world)
            targets = torch.from_numpy(pool.targets[positions]).to(self.device)
            row_mask = torch.from_numpy(pool.row_mask[positions]).to(self.device)
            pool_ids = torch.from_numpy(pool.label_ids).to(self.device)

        # every worker encodes an equal share of the pool (padded by repeating the first labels)
        num_pool = len(pool.label_ids)
        share = -(-num_pool // self.world)
        my_positions = np.resize(np.arange(num_pool), share * self.world)[self.rank * share:(self.rank + 1) * share]
        extra = {}
        if self.centroids is not None:  # prototype inputs of the pool (collectives: every worker, whole pool)
            free = self.free_table(torch.from_numpy(self.free_of[pool.label_ids]).to(self.device))
            centroids = self.centroids.lookup(pool_ids)
            mine = torch.from_numpy(my_positions).to(self.device)
            extra = {"label_free": free[mine], "label_centroid": centroids[mine]}

        with record_function("xmc.tokens"):
            query_ids, query_mask = self.cache.batch("train", batch[positions])
            label_ids, label_mask = self.cache.batch("labels", pool.label_ids[my_positions])
        with record_function("xmc.forward"), torch.autocast(
                self.device.type, dtype=self.autocast_dtype or torch.float32, enabled=self.autocast_dtype is not None):
            out = self.ddp_model(query_ids.to(self.device), query_mask.to(self.device),
                                 label_ids.to(self.device), label_mask.to(self.device), **extra)
        with record_function("xmc.loss"):
            label_text = all_gather_with_grad(out["label_de"], [share] * self.world)[:num_pool]
            label_proto = (all_gather_with_grad(out["label_proto"], [share] * self.world)[:num_pool]
                           if "label_proto" in out else None)
            loss = self._loss(out, label_text, label_proto, pool_ids, targets, row_mask)

        for optimizer in self._optimizers():
            optimizer.zero_grad(set_to_none=True)
        with record_function("xmc.backward"):
            loss.backward()
        with record_function("xmc.optimizer"):
            self._apply_gradients()
        if self.centroids is not None and cfg.model.centroid_update == "ema":
            self.centroids.ema_update(pool_ids, out["query_de"].detach(), targets, cfg.model.centroid_beta)
        return mean_over_workers(float(loss.detach()), self.device)

    def _all_labels_step(self, batch: np.ndarray) -> float:
        """DEXML: every query against all L labels, label embeddings through gradient caching."""
        positions = local_slice(np.arange(len(batch)), self.rank, self.world)
        rows = batch[positions]
        targets = torch.from_numpy(self.positives[rows].toarray() > 0).to(self.device)
        row_mask = targets.any(dim=1)
        all_ids = torch.arange(self.num_labels, device=self.device)
        mine = my_share(np.arange(self.num_labels), self.rank, self.world)
        chunks = [mine[a:b] for a, b in chunk_bounds(len(mine), self.config.pool.label_chunk)]
        sizes = [len(part) for part in np.array_split(np.arange(self.num_labels), self.world)]
        query_ids, query_mask = (t.to(self.device) for t in self.cache.batch("train", rows))

        def autocast():
            return torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                                  enabled=self.autocast_dtype is not None)

        def encode_labels(chunk: int) -> torch.Tensor:
            ids, mask = self.cache.batch("labels", chunks[chunk])
            with autocast():
                return self.ddp_model(label_ids=ids.to(self.device), label_mask=mask.to(self.device))["label_de"]

        def encode_queries() -> dict[str, torch.Tensor]:
            with autocast():
                return self.ddp_model(query_ids, query_mask)

        def reduce_label_grad(grad: torch.Tensor) -> torch.Tensor:
            if self.world > 1:
                import torch.distributed as dist

                dist.all_reduce(grad)
            start = sum(sizes[: self.rank])
            return grad[start:start + sizes[self.rank]]

        for optimizer in self._optimizers():
            optimizer.zero_grad(set_to_none=True)
        no_sync = self.ddp_model.no_sync if self.world > 1 else contextlib.nullcontext
        loss = cached_step(encode_labels, len(chunks), encode_queries,
                           lambda q, labels: self._loss(q, labels, None, all_ids, targets, row_mask),
                           lambda local: all_gather_with_grad(local, sizes).detach(),
                           reduce_label_grad, self.device, no_sync)
        self._apply_gradients()
        return mean_over_workers(float(loss), self.device)

    # ------------------------------------------------------------------------------------------------------
    # evaluation

    def scoring_vectors(self) -> tuple[np.ndarray, np.ndarray | None]:
        """The label vectors the model ranks by: ``(DE side, classifier side or None)``, both L2-normalised.

        A query's fused score is ``[q_DE ; q_CLF] · [DE ; CLF]`` = cos_DE + cos_CLF (see
        :meth:`xmc.models.xmc_model.XMCModel.embed_both`). Every worker calls it; every worker gets both.
        With ``model.clf_untrained: label_text``, labels no training query is tagged with take their label text
        through the current classifier head instead of their table row, which only negatives ever moved.
        """
        labels_de = self.label_text_vectors()
        labels_clf = None
        if self.table is not None:
            labels_clf = self.table.full_normalized().float().cpu().numpy()
            if self.config.model.clf_untrained == "label_text" and len(self.untrained_labels):
                labels_clf[self.untrained_labels] = self.untrained_text_vectors()
        return self.label_vectors(labels_de), labels_clf

    def untrained_text_vectors(self) -> np.ndarray:
        """Classifier-side vectors of the untrained labels' texts, in ``untrained_labels`` order: what
        ``clf_untrained: label_text`` scores those labels by."""
        return self._encode("labels", self.untrained_labels, self.model.embed_clf)

    def query_vectors(self, split: str, rows: np.ndarray) -> np.ndarray:
        """``[q_DE ; q_CLF]`` of ``rows`` of a split (``q_DE`` alone without a classifier)."""
        return self._encode(split, rows, self.model.embed_both if self.table is not None else self.model.embed_de)

    def evaluate(self, final: bool) -> dict[str, dict[str, float]] | None:
        """DE-only, classifier-only and fused metrics on ``eval.split`` (rank 0).

        The fused score is ``de_weight · cos_DE + cos_CLF`` plus ``cold_start_offset`` for labels without
        training positives (:mod:`xmc.evaluation.calibration`; defaults: the plain sum). A model without a
        classifier reports a fused entry only when an offset is set.
        """
        labels_de, labels_clf = self.scoring_vectors()
        validation = self.config.eval.split == "validation"
        split, rows = ("train", self.validation_rows) if validation else \
            ("test", np.arange(self.dataset.num_points("test")))
        queries = self.query_vectors(split, rows)
        if self.rank != 0:
            return None
        cfg = self.config
        heads = cfg.model
        d = self.model.de_dim

        def score(indices, scores):
            return evaluate_predictions(self.dataset, indices, scores, cfg.dataset.propensity_a,
                                        cfg.dataset.propensity_b, split=split,
                                        rows=rows if validation else None, train_rows=self.propensity_rows)

        results = {"de": score(*predict_topk(queries[:, :d], labels_de, cfg.eval, self.device))}
        if labels_clf is not None:
            results["clf"] = score(*predict_topk(queries[:, d:], labels_clf, cfg.eval, self.device))
        fused = predict_topk(calibration.query_vectors(queries, heads.cold_start_offset),
                             calibration.label_vectors(labels_de, labels_clf, self.untrained_labels,
                                                       heads.de_weight, heads.cold_start_offset),
                             cfg.eval, self.device)
        if labels_clf is not None or calibration.has_offset_column(heads.cold_start_offset):
            results["fused"] = score(*fused)
        if final:
            save_predictions(self.run_dir / "predictions.npz", *fused)
        return results

    # ------------------------------------------------------------------------------------------------------
    # checkpoints

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "global_step": self.global_step,
            "loss_sum": self.loss_sum, "loss_count": self.loss_count,
            "plan": None if self.plan is None else {"order": self.plan.order, "offsets": self.plan.offsets},
            "clusters": None if self.clusters is None else {"order": self.clusters.order,
                                                           "offsets": self.clusters.offsets},
            "shortlists": self.shortlists,
            "free_of": self.free_of,
            "reported": self.reported,
        }

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.step_in_epoch = int(state["epoch"]), int(state["step_in_epoch"])
        self.global_step = int(state["global_step"])
        self.loss_sum, self.loss_count = float(state["loss_sum"]), int(state["loss_count"])
        self.plan = BatchPlan(state["plan"]["order"], state["plan"]["offsets"]) if state["plan"] else None
        self.clusters = (BatchPlan(state["clusters"]["order"], state["clusters"]["offsets"])
                         if state["clusters"] else None)
        self.shortlists = state["shortlists"]
        self.free_of = state.get("free_of")
        self.reported = state.get("reported", {})

    @staticmethod
    def _shard_state(table: ShardedLabelTable, optimizer: torch.optim.Optimizer) -> dict:
        param = table.rows.weight
        return {"owned": table.owned, "weight": param.detach(), **optimizer.state.get(param, {})}

    def _load_shards(self, directory: Path, name: str, table: ShardedLabelTable,
                     optimizer: torch.optim.Optimizer) -> None:
        """Rows of every saved shard, re-split for this run's workers (the world size may have changed)."""
        shards = [load_state(directory, p.stem) for p in sorted(directory.glob(f"{name}-rank*.json"))]
        param = table.rows.weight
        full = {}
        for key in ("weight", "exp_avg", "exp_avg_sq"):
            if shards and all(key in s for s in shards):
                rows = torch.empty(table.num_labels, param.shape[1])
                for shard in shards:
                    rows[torch.from_numpy(shard["owned"])] = shard[key].float()
                full[key] = rows[torch.from_numpy(table.owned)].to(self.device)
        with torch.no_grad():
            param.copy_(full["weight"])
        if "exp_avg" in full:
            optimizer.state[param] = {"step": shards[0]["step"], "exp_avg": full["exp_avg"],
                                      "exp_avg_sq": full["exp_avg_sq"]}

    def save_checkpoint(self, metrics: dict) -> None:
        import ray.train

        self.reported = metrics
        with tempfile.TemporaryDirectory(prefix="xmc-ckpt-") as tmp:
            if self.rank == 0:
                save_state(tmp, "model", self.model.state_dict())
                save_state(tmp, "optimizer", self.optimizer.state_dict())
                save_state(tmp, "trainer", self.state_dict())
            for name, (table, optimizer) in self._sharded_tables().items():
                save_state(tmp, f"{name}-rank{self.rank:04d}", self._shard_state(table, optimizer))
            if self.centroids is not None:
                save_state(tmp, f"centroids-rank{self.rank:04d}", {"owned": self.centroids.owned,
                                                                    "rows": self.centroids.rows})
            save_state(tmp, f"rng-rank{self.rank:04d}", rng_state())
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                             checkpoint_dir_name=f"checkpoint_epoch{self.epoch:03d}_step{self.global_step:07d}")

    def restore(self, directory: Path) -> None:
        self._label_text = None
        self.model.load_state_dict(load_state(directory, "model"))
        self.optimizer.load_state_dict(load_state(directory, "optimizer"))
        for group in self.optimizer.param_groups:  # the configured rates, not the saved ones
            group["base_lr"] = group.get("base_lr", group["lr"])
        self.load_state_dict(load_state(directory, "trainer"))
        for name, (table, optimizer) in self._sharded_tables().items():
            self._load_shards(directory, name, table, optimizer)
        if self.centroids is not None:
            rows = torch.empty(self.num_labels, self.centroids.dim)
            for path in sorted(directory.glob("centroids-rank*.json")):
                shard = load_state(directory, path.stem)
                rows[torch.from_numpy(shard["owned"])] = shard["rows"].float()
            self.centroids.rows = rows[torch.from_numpy(self.centroids.owned)].to(self.device)
        rng_file = directory / f"rng-rank{self.rank:04d}.json"
        set_rng_state(load_state(directory, rng_file.stem if rng_file.exists() else "rng-rank0000"))

    # ------------------------------------------------------------------------------------------------------
    # the loop

    def _maybe_fail(self) -> None:
        step, marker = os.environ.get(FAIL_AT_STEP_ENV), os.environ.get(FAIL_MARKER_ENV)
        if step and marker and self.global_step == int(step) and not Path(marker).exists():
            Path(marker).write_text(f"failed at step {self.global_step}\n")
            os._exit(17)

    def fit(self) -> None:
        import ray.train

        cfg = self.config.train
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as directory:
                self.restore(Path(directory))
            if self.rank == 0:
                print(f"resumed from checkpoint at epoch {self.epoch} step {self.global_step} "
                      f"({self.step_in_epoch} steps into the epoch)", flush=True)
            if self.epoch >= cfg.epochs:
                # A rerun of a finished run (e.g. a Tune trial killed after its last checkpoint but before
                # Tune recorded it) trains nothing; it reports the final metrics again so the caller has them.
                ray.train.report(self.reported)
                return
        else:
            if self.table is not None and self.config.model.clf_init == "label_text":
                self.initialise_table_from_label_text()
            if self.centroids is not None:
                self.initialise_prototypes()

        while self.epoch < cfg.epochs:
            if self.plan is None:
                self.epoch_started = time.time()  # an epoch's time includes its mining
                if self.config.mining.refresh_due(self.epoch):
                    self.refresh_mining()
                self.plan = self.plan_epoch()
                self.loss_sum, self.loss_count = 0.0, 0
            self._label_text = None  # the next step changes the weights
            bar = self._progress_bar(len(self.plan), f"epoch {self.epoch + 1}/{cfg.epochs}")
            bar.update(self.step_in_epoch)
            while self.step_in_epoch < len(self.plan):
                self._maybe_fail()
                loss = self.train_step(self.plan.batch(self.step_in_epoch))
                self.step_in_epoch += 1
                self.global_step += 1
                self.loss_sum += loss
                self.loss_count += 1
                bar.update(1)
                if self.global_step % 10 == 0:
                    self.reporter.scalar("train/loss", loss, self.global_step)
                if cfg.checkpoint_every_steps and self.global_step % cfg.checkpoint_every_steps == 0 \
                        and self.step_in_epoch < len(self.plan):
                    self.save_checkpoint({"epoch": self.epoch, "step": self.global_step, "loss": loss})
            bar.close()
            self.end_epoch()

    def end_epoch(self) -> None:
        cfg = self.config.train
        mean_loss = self.loss_sum / max(self.loss_count, 1)
        record = {"epoch": self.epoch + 1, "loss": mean_loss, "steps": self.loss_count,
                  "seconds": round(time.time() - self.epoch_started, 1)}
        final = self.epoch + 1 == cfg.epochs
        due = final or (cfg.eval_every and (self.epoch + 1) % cfg.eval_every == 0)
        evaluation = self.evaluate(final) if due else None
        self.epoch += 1
        self.step_in_epoch = 0
        self.plan = None
        self.reporter.epoch_end(record, evaluation, self.global_step)
        # reported to Ray (and Tune): the main predictor's metrics; every variant is in metrics.json
        metrics = {"epoch": self.epoch, "step": self.global_step, "loss": mean_loss}
        if evaluation:
            metrics.update(evaluation.get("fused") or evaluation["de"])
        if self.rank == 0:
            line = f"epoch {self.epoch}/{cfg.epochs}: loss {mean_loss:.4f} ({record['seconds']}s)"
            if evaluation:
                shown = ", ".join(f"{k} {metrics[k]:.2f}" for k in ("P@1", "P@5", "PSP@1"))
                line += f"; {self.config.eval.split} {shown}"
            print(line, flush=True)
        self.save_checkpoint(metrics)


def train_loop_per_worker(loop_config: dict) -> None:
    """Ray Train's per-worker entry point: rebuild the typed config and run the loop."""
    from xmc.config import from_dict

    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # it logs each CPU variant it tries
    config = from_dict(ExperimentConfig, loop_config["config"])
    trainer = Trainer(config, Path(loop_config["run_dir"]))
    trainer.fit()
    trainer.reporter.close()
