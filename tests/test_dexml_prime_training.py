"""Gradient caching equals the plain all-labels computation; PRIME's centroids and free vectors move."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xmc.config import load_config
from xmc.data.dataset import PreparedDataset
from xmc.data.tokens import load_tokenizer, tokenize_texts
from xmc.experiment import ExperimentConfig
from xmc.losses.config import LossConfig
from xmc.losses.criteria import make_criterion
from xmc.models.config import HeadsConfig
from xmc.models.encoder import TextEncoder, resolve_model_dir
from xmc.models.xmc_model import XMCModel
from xmc.training.driver import resolve_run
from xmc.training.gradcache import cached_step
from xmc.training.trainer import Trainer

from conftest import REPO


def _batch(texts, max_len=16):
    ids, lengths = tokenize_texts(load_tokenizer(resolve_model_dir("default")), texts, max_len)
    ids = torch.from_numpy(ids.astype(np.int64))
    mask = (torch.arange(max_len)[None, :] < torch.from_numpy(lengths)[:, None]).long()
    return ids, mask


def test_gradient_caching_gives_the_plain_gradients(small_cooking):
    dataset = PreparedDataset(small_cooking)
    labels = dataset.texts("labels")[:60]
    queries = dataset.texts("train")[:8]
    positives = dataset.label_matrix("train")[:8, :60].toarray() > 0
    positives[np.arange(8), np.arange(8)] = True  # every query has a positive among the 60 labels
    targets = torch.from_numpy(positives)
    torch.manual_seed(0)
    model = XMCModel(TextEncoder(resolve_model_dir("default")),
                     HeadsConfig(classifier=False, dropout=0.1)).train()
    label_ids, label_mask = _batch(labels)
    query_ids, query_mask = _batch(queries)
    chunks = [slice(0, 25), slice(25, 50), slice(50, 60)]
    criterion = make_criterion("decoupled", LossConfig(), scale=20.0)

    def loss_fn(query_out, label_embeddings):
        return criterion(query_out["query_de"] @ label_embeddings.T, targets, None)

    # plain: everything with a graph, in the same order (so dropout draws the same masks)
    torch.manual_seed(1)
    encoded = [model(label_ids=label_ids[c], label_mask=label_mask[c])["label_de"] for c in chunks]
    plain_loss = loss_fn(model(query_ids, query_mask), torch.cat(encoded))
    plain_loss.backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)

    torch.manual_seed(1)
    cached_loss = cached_step(
        lambda i: model(label_ids=label_ids[chunks[i]], label_mask=label_mask[chunks[i]])["label_de"],
        len(chunks), lambda: model(query_ids, query_mask), loss_fn, lambda local: local, lambda grad: grad,
        torch.device("cpu"))
    cached = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert cached_loss.item() == pytest.approx(plain_loss.item(), rel=1e-6)
    assert set(cached) == set(plain) and len(plain) > 50
    for name, grad in plain.items():
        assert torch.allclose(cached[name], grad, atol=1e-6, rtol=1e-4), name


def _trainer(small_cooking, tmp_path, method, *extra) -> Trainer:
    config = load_config(ExperimentConfig, [REPO / "configs/datasets/cooking-stackexchange.yaml",
                                            REPO / f"configs/methods/{method}.yaml"], [
        "train.num_workers=0", f"dataset.prepared={small_cooking}", "dataset.max_len=16",
        "train.batch_size=32", "train.progress=false", f"run.storage={tmp_path}", *extra])
    config, run_dir = resolve_run(config, method)
    return Trainer(config, run_dir)


def test_prime_centroids_and_free_vectors_move(small_cooking, tmp_path):
    trainer = _trainer(small_cooking, tmp_path, "prime")
    trainer.initialise()
    trainer.plan = trainer.planner.plan(trainer.epoch)
    prototypes = trainer.scoring.prototypes
    centroids = prototypes.centroids.rows.clone()
    free = prototypes.free.rows.weight.detach().clone()
    assert torch.allclose(centroids.norm(dim=1), torch.ones(len(centroids)), atol=1e-5)
    batch = trainer.plan.batch(0)
    pool = trainer.step_pool(batch)
    loss = trainer.train_step(batch)
    assert np.isfinite(loss) and loss > 0
    moved = (prototypes.centroids.rows - centroids).norm(dim=1) > 1e-6
    in_pool = torch.zeros(trainer.data.num_labels, dtype=torch.bool)
    in_pool[torch.from_numpy(pool.label_ids)] = True
    assert moved[in_pool].all() and not moved[~in_pool].any()  # EMA of the batch's query embeddings
    assert torch.allclose(prototypes.centroids.rows.norm(dim=1), torch.ones(len(centroids)), atol=1e-5)
    changed = (prototypes.free.rows.weight.detach() - free).norm(dim=1) > 0
    used = np.unique(prototypes.free_of[pool.label_ids])
    assert changed[torch.from_numpy(used)].all() and changed.sum() == len(used)  # sparse: only pool clusters


def test_prime_exact_centroids_are_query_means(small_cooking, tmp_path):
    trainer = _trainer(small_cooking, tmp_path, "prime", "model.centroid_update=exact")
    trainer.initialise()
    scoring, data = trainer.scoring, trainer.data
    queries = scoring.encode(scoring.model.embed_de, data.cache.arrays("train"), data.train_rows)
    label = int(np.argmax(np.asarray(data.positives.sum(axis=0)).ravel()))
    tagged = data.positives[data.train_rows][:, label].toarray().ravel() > 0
    mean = queries[tagged].mean(axis=0)
    assert np.allclose(scoring.prototypes.centroids.rows[label].numpy(), mean / np.linalg.norm(mean),
                       atol=1e-5)


def test_dexml_all_labels_step_trains(small_cooking, tmp_path):
    trainer = _trainer(small_cooking, tmp_path, "dexml", "pool.label_chunk=256")
    trainer.plan = trainer.planner.plan(trainer.epoch)
    before = trainer.scoring.model.de_proj.weight.detach().clone()
    losses = [trainer.train_step(trainer.plan.batch(i)) for i in range(2)]
    assert all(np.isfinite(losses))
    assert not torch.equal(before, trainer.scoring.model.de_proj.weight)
