"""How a fresh run starts its label-side state from the label texts (a resumed run restores it instead)."""

from __future__ import annotations

import numpy as np
import torch

from xmc.distributed import broadcast_array
from xmc.mining.clustering import balanced_clusters
from xmc.models.encoder import encode_tokens
from xmc.scoring.model import ScoringModel
from xmc.training.data import TrainingData


@torch.no_grad()
def classifier_from_label_text(scoring: ScoringModel) -> None:
    """``clf_init: label_text``: each worker sets the rows it owns to its labels' texts through the
    classifier head, so the classifier starts where the dual encoder does."""
    ids, lengths = scoring.label_tokens
    with scoring.eval_mode(), torch.inference_mode():
        rows = encode_tokens(scoring.model.embed_clf, ids, lengths, batch_size=scoring.batch_size,
                             device=scoring.device, dtype=scoring.dtype, rows=scoring.classifier.owned,
                             progress=False)
    scoring.classifier.rows.weight.copy_(torch.from_numpy(rows).to(scoring.device))


def prototypes_from_label_text(scoring: ScoringModel, data: TrainingData, seed: int) -> None:
    """PRIME's start: free-vector clusters of labels with similar text (each free vector starts as its
    cluster's mean label embedding) and centroids from the training queries (labels without queries start
    from their text)."""
    prototypes = scoring.prototypes
    labels = scoring.label_text_vectors()
    queries = scoring.encode(scoring.model.embed_de, data.cache.arrays("train"), data.train_rows)
    num_free = prototypes.free.num_labels
    free_of = None
    if scoring.rank == 0:
        rng = np.random.default_rng([seed, 0, 4])
        leaves = balanced_clusters(labels, max(1, data.num_labels // num_free), rng)
        free_of = np.zeros(data.num_labels, dtype=np.int64)
        for cluster, leaf in enumerate(leaves):
            free_of[leaf] = cluster % num_free
    prototypes.free_of = broadcast_array(free_of, scoring.device)
    means = np.zeros((num_free, labels.shape[1]), dtype=np.float32)
    np.add.at(means, prototypes.free_of, labels)
    means /= np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
    with torch.no_grad():
        prototypes.free.rows.weight.copy_(torch.from_numpy(means[prototypes.free.owned]).to(scoring.device))
    own_text = labels[prototypes.centroids.owned]
    prototypes.set_exact_centroids(data.positives[data.train_rows], queries, own_text)
