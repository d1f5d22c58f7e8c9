"""How a fresh run starts its label-side state from the label texts (a resumed run restores it instead)."""

from __future__ import annotations

import numpy as np
import torch

from xmc.distributed import broadcast_array, gather_rows_to_first, scatter_rows
from xmc.memory import release_freed_memory
from xmc.mining.ann import CHUNK_BYTES
from xmc.mining.clustering import balanced_clusters
from xmc.models.encoder import encode_tokens
from xmc.scoring.model import ScoringModel
from xmc.training.data import TrainingData


@torch.no_grad()
def classifier_from_label_text(scoring: ScoringModel) -> None:
    """``clf_init: label_text``: each worker sets the rows it owns to its labels' texts through the
    classifier head, so the classifier starts where the dual encoder does. The rows are encoded and copied a
    chunk at a time (:data:`~xmc.mining.ann.CHUNK_BYTES`), so no second copy of the table exists."""
    ids, lengths = scoring.label_tokens
    table = scoring.classifier
    chunk = max(1, CHUNK_BYTES // (table.dim * 4))
    for start in range(0, len(table.owned), chunk):
        with scoring.eval_mode(), torch.inference_mode():
            rows = encode_tokens(scoring.model.embed_clf, ids, lengths, batch_size=scoring.batch_size,
                                 device=scoring.device, dtype=scoring.dtype,
                                 rows=table.owned[start:start + chunk], progress=False)
        table.rows.weight[start:start + chunk] = torch.from_numpy(rows).to(scoring.device)
        release_freed_memory()  # else the heap keeps each chunk's freed temporaries (xmc.memory)


def prototypes_from_label_text(scoring: ScoringModel, data: TrainingData, seed: int) -> None:
    """PRIME's start: free-vector clusters of labels with similar text (each free vector starts as its
    cluster's mean label embedding) and centroids from the training queries (labels without queries start
    from their text).

    Each worker encodes its own labels; clustering them all is one process's work, so rank 0 alone receives
    every label's vector, once, and sends each worker the starting rows of the free vectors it owns.
    """
    prototypes = scoring.prototypes
    own_text = scoring.own_label_text_vectors()
    queries = scoring.encode(scoring.model.embed_de, data.cache.arrays("train"), data.train_rows)
    num_free, world = prototypes.free.num_labels, scoring.world_size
    parts = gather_rows_to_first(own_text, scoring.device)
    free_of = blocks = None
    if parts is not None:  # rank 0
        labels = np.empty((data.num_labels, own_text.shape[1]), dtype=np.float32)
        for rank, part in enumerate(parts):  # worker r holds the labels l % world == r, in order
            labels[rank::world] = part
        rng = np.random.default_rng([seed, 0, 4])
        leaves = balanced_clusters(labels, max(1, data.num_labels // num_free), rng)
        free_of = np.zeros(data.num_labels, dtype=np.int64)
        for cluster, leaf in enumerate(leaves):
            free_of[leaf] = cluster % num_free
        means = np.zeros((num_free, labels.shape[1]), dtype=np.float32)
        np.add.at(means, free_of, labels)
        means /= np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
        blocks = [means[rank::world] for rank in range(world)]  # the free rows each worker owns
        del labels, means
    prototypes.free_of = broadcast_array(free_of, scoring.device)
    with torch.no_grad():
        prototypes.free.rows.weight.copy_(torch.from_numpy(scatter_rows(blocks, scoring.device)).to(
            scoring.device))
    prototypes.set_exact_centroids(data.positives[data.train_rows], queries, own_text)
