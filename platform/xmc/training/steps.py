"""The two ways a step computes its loss and gradients: against the step's label pool, or against all
labels with gradient caching (DEXML). Both leave the gradients in place for the optimizers and return the
loss of this worker's share of the batch.

A pool step (:class:`PoolStep`):

1. every worker holds the same label pool (built by the trainer from the same seed) and takes an equal
   share of the batch's queries;
2. each worker encodes its queries and an equal share of the pool's labels in a single forward call of
   the DDP-wrapped model; label embeddings are all-gathered with gradients, so every worker scores its
   queries against the whole pool;
3. the pool's classifier rows come from the label-sharded table (one all-reduce of ``[pool, dim]``);
4. the objective (:func:`xmc.losses.objective.step_loss`) is back-propagated: DDP averages the dense
   gradients, and the tables receive sparse gradients for the pool's rows only.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function

from xmc.distributed import all_gather_with_grad, equal_share, my_share, reduce_scatter_rows, share_sizes
from xmc.experiment import ExperimentConfig
from xmc.losses.objective import step_loss
from xmc.models.encoder import autocast
from xmc.scoring.model import ScoringModel
from xmc.training.data import TrainingData
from xmc.training.gradcache import cached_step, chunk_bounds
from xmc.training.pool import LabelPool


class Step:
    """What both strategies share: the model, its DDP wrapper, the data and the positive weights."""

    def __init__(self, config: ExperimentConfig, data: TrainingData, scoring: ScoringModel,
                 ddp_model: nn.Module):
        self.config, self.data, self.scoring, self.ddp_model = config, data, scoring, ddp_model
        self.device = scoring.device
        self.rank, self.world = scoring.rank, scoring.world_size
        self.label_weights = (torch.from_numpy(data.label_weights).to(self.device)
                              if config.pool.positive_sampling == "inverse_propensity" else None)

    def my_queries(self, batch: np.ndarray) -> np.ndarray:
        """Positions in ``batch`` of this worker's queries (every worker the same number)."""
        return equal_share(len(batch), self.rank, self.world)

    def positive_weights(self, label_ids: torch.Tensor) -> torch.Tensor | None:
        return None if self.label_weights is None else self.label_weights[label_ids].float()

    def forward(self, **inputs) -> dict[str, torch.Tensor]:
        with autocast(self.device, self.scoring.dtype):
            return self.ddp_model(**inputs)

    def loss(self, text: torch.Tensor, targets: torch.Tensor, row_mask: torch.Tensor, label_ids: torch.Tensor,
             generator: torch.Generator, proto: torch.Tensor | None = None, clf: torch.Tensor | None = None
             ) -> torch.Tensor:
        return step_loss(text, targets, row_mask, self.config.loss, self.config.model.scale, proto=proto,
                         clf=clf, generator=generator, positive_weights=self.positive_weights(label_ids))


class PoolStep(Step):
    """A step against the step's label pool (see the module docstring)."""

    def __call__(self, batch: np.ndarray, pool: LabelPool, generator: torch.Generator) -> torch.Tensor:
        scoring, device = self.scoring, self.device
        with record_function("xmc.pool"):
            positions = self.my_queries(batch)
            targets = torch.from_numpy(pool.targets[positions]).to(device)
            row_mask = torch.from_numpy(pool.row_mask[positions]).to(device)
            pool_ids = torch.from_numpy(pool.label_ids).to(device)
        num_pool = len(pool.label_ids)
        my_labels = equal_share(num_pool, self.rank, self.world)
        share = len(my_labels)
        extra = {}
        if scoring.prototypes is not None:
            # prototype inputs of the pool (collectives: every worker, whole pool)
            free, centroids = scoring.prototypes.inputs(pool.label_ids)
            mine = torch.from_numpy(my_labels).to(device)
            extra = {"label_free": free[mine], "label_centroid": centroids[mine]}
        with record_function("xmc.tokens"):
            query_ids, query_mask = self.data.cache.batch("train", batch[positions])
            label_ids, label_mask = self.data.cache.batch("labels", pool.label_ids[my_labels])
        with record_function("xmc.forward"):
            out = self.forward(query_ids=query_ids.to(device), query_mask=query_mask.to(device),
                               label_ids=label_ids.to(device), label_mask=label_mask.to(device), **extra)
        with record_function("xmc.loss"):
            query = out["query_de"]
            label_text = all_gather_with_grad(out["label_de"], [share] * self.world)[:num_pool]
            proto = None
            if "label_proto" in out:
                proto = query @ all_gather_with_grad(out["label_proto"], [share] * self.world)[:num_pool].T
            clf = None
            if scoring.classifier is not None:
                rows = scoring.classifier(pool_ids)
                rows = F.normalize(F.dropout(rows, self.config.model.dropout, scoring.model.training), dim=-1)
                clf = out["query_clf"] @ rows.T
            loss = self.loss(query @ label_text.T, targets, row_mask, pool_ids, generator, proto=proto,
                             clf=clf)
        with record_function("xmc.backward"):
            loss.backward()
        model = self.config.model
        if scoring.prototypes is not None and model.centroid_update == "ema":
            scoring.prototypes.centroids.ema_update(pool_ids, query.detach(), targets, model.centroid_beta)
        return loss.detach()


class AllLabelsStep(Step):
    """DEXML: every query against all L labels; label embeddings through gradient caching
    (:mod:`xmc.training.gradcache`), each worker encoding its share of the labels in chunks."""

    def __call__(self, batch: np.ndarray, pool: LabelPool | None, generator: torch.Generator) -> torch.Tensor:
        device, num_labels = self.device, self.data.num_labels
        rows = batch[self.my_queries(batch)]
        targets = torch.from_numpy(self.data.positives[rows].toarray() > 0).to(device)
        row_mask = targets.any(dim=1)
        all_ids = torch.arange(num_labels, device=device)
        mine = my_share(np.arange(num_labels), self.rank, self.world)
        chunks = [mine[a:b] for a, b in chunk_bounds(len(mine), self.config.pool.label_chunk)]
        sizes = share_sizes(num_labels, self.world)
        query_ids, query_mask = (t.to(device) for t in self.data.cache.batch("train", rows))

        def encode_labels(chunk: int) -> torch.Tensor:
            ids, mask = self.data.cache.batch("labels", chunks[chunk])
            return self.forward(label_ids=ids.to(device), label_mask=mask.to(device))["label_de"]

        def reduce_label_grad(grad: torch.Tensor) -> torch.Tensor:
            return reduce_scatter_rows(grad, sizes)  # the gradient of the label rows this worker encoded

        def loss_fn(queries: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
            return self.loss(queries["query_de"] @ labels.T, targets, row_mask, all_ids, generator)

        no_sync = self.ddp_model.no_sync if self.world > 1 else contextlib.nullcontext
        return cached_step(encode_labels, len(chunks),
                           lambda: self.forward(query_ids=query_ids, query_mask=query_mask),
                           loss_fn, lambda local: all_gather_with_grad(local, sizes).detach(),
                           reduce_label_grad, device, no_sync)
