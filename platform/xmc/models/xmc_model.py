"""The trained model: one shared encoder, a dual-encoder (DE) head for queries and labels, and a query
classifier head whose scores are taken against a per-label table (:mod:`xmc.models.label_table`).

Scores are cosines times ``scale`` for both heads, in training and at inference, so the fused score
``cos_DE + cos_CLF`` of inference ranks with the same geometry the losses trained.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from xmc.models.config import HeadsConfig
from xmc.models.encoder import TextEncoder
from xmc.models.prototypes import LabelPrototypeNetwork


def _projection(size_in: int, size_out: int) -> nn.Linear:
    """A linear map that starts as the identity when square, so training starts from the pretrained
    encoder's geometry (the zero-shot quality) instead of a random rotation of it."""
    layer = nn.Linear(size_in, size_out)
    if size_in == size_out:
        with torch.no_grad():
            layer.weight.copy_(torch.eye(size_in))
            layer.bias.zero_()
    return layer


class XMCModel(nn.Module):
    """Encoder + heads. ``forward`` is the training pass (one call per step, as DDP expects)."""

    def __init__(self, encoder: TextEncoder, config: HeadsConfig):
        super().__init__()
        self.encoder = encoder
        self.config = config
        hidden = encoder.hidden_size
        self.de_dim = config.de_dim or hidden
        self.de_proj = _projection(hidden, self.de_dim)
        self.clf_dim = (config.clf_dim or hidden) if config.classifier else 0
        self.clf_proj = _projection(hidden, self.clf_dim) if config.classifier else None
        self.dropout = nn.Dropout(config.dropout)
        self.lpn = (LabelPrototypeNetwork(self.de_dim, config.lpn_heads, config.lpn_ffn, config.dropout)
                    if config.prototypes else None)

    def de_head(self, pooled: torch.Tensor) -> torch.Tensor:
        out = self.de_proj(pooled)
        if self.config.de_activation == "tanh":
            out = torch.tanh(out)
        return F.normalize(self.dropout(out).float(), dim=-1)

    def clf_head(self, pooled: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.dropout(self.clf_proj(pooled)).float(), dim=-1)

    def embed_de(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Normalised DE embedding of queries or labels."""
        return self.de_head(self.encoder(input_ids, attention_mask))

    def embed_clf(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Normalised classifier-side query embedding (to be scored against the label table)."""
        return self.clf_head(self.encoder(input_ids, attention_mask))

    def embed_both(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``[DE ; CLF]`` query embedding with one encoder pass (fused inference: cos_DE + cos_CLF)."""
        pooled = self.encoder(input_ids, attention_mask)
        return torch.cat([self.de_head(pooled), self.clf_head(pooled)], dim=-1)

    def forward(self, query_ids: torch.Tensor | None = None, query_mask: torch.Tensor | None = None,
                label_ids: torch.Tensor | None = None, label_mask: torch.Tensor | None = None,
                label_free: torch.Tensor | None = None, label_centroid: torch.Tensor | None = None
                ) -> dict[str, torch.Tensor]:
        """Embeddings of the queries and/or labels given: ``query_de``, ``query_clf`` (with a classifier),
        ``label_de``, and ``label_proto`` (with prototypes, given the labels' free vectors and centroids)."""
        out = {}
        if query_ids is not None:
            pooled = self.encoder(query_ids, query_mask)
            out["query_de"] = self.de_head(pooled)
            if self.clf_proj is not None:
                out["query_clf"] = self.clf_head(pooled)
        if label_ids is not None:
            out["label_de"] = self.embed_de(label_ids, label_mask)
            if self.lpn is not None and label_free is not None:
                out["label_proto"] = self.lpn(out["label_de"], label_free, label_centroid)
        return out
