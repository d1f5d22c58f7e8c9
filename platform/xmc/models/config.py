"""Model settings (kept free of torch imports so that loading a config stays cheap)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

DEFAULT_MODEL = "default"


@dataclass(kw_only=True)
class EncoderConfig:
    """The shared query/label encoder.

    Args:
        model: ``default`` (the packaged all-MiniLM-L6-v2) or the path of a Hugging Face model directory.
        pooling: ``mean`` over non-padding tokens (sentence-transformers style) or ``cls`` (first token).
        batch_size: texts per forward pass when encoding for search/evaluation.
        dtype: ``auto`` = float32 on CPU, bfloat16 on CUDA (inference).
        group_by_length: run a batch as length-sorted groups, each cut to its longest text (same output,
            fewer padded tokens).
    """

    model: str = DEFAULT_MODEL
    pooling: Literal["mean", "cls"] = "mean"
    batch_size: int = 256
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    group_by_length: bool = True


@dataclass(kw_only=True)
class HeadsConfig:
    """Heads on top of the shared encoder.

    Args:
        de_dim: output size of the dual-encoder projection (0 = the encoder's hidden size).
        de_activation: ``tanh`` after the projection (UniDEC) or ``none``.
        dropout: dropout after the projections and on classifier rows during training.
        classifier: train a per-label classifier table and a query classifier head next to the DE.
        clf_dim: classifier width (0 = the encoder's hidden size).
        clf_init: ``label_text`` (each row starts as its label's zero-shot embedding, so the classifier
            starts where the dual encoder does) or ``xavier`` (UniDEC's random start).
        clf_untrained: how labels that no training query is tagged with are scored on the classifier side.
            Their table rows never see a positive, only negative updates when mined or sampled. ``table``
            (default) keeps those rows; ``label_text`` scores such labels, at every evaluation and in exported
            bundles, by their label text through the current classifier head (the value ``clf_init:
            label_text`` starts every row with), which ranks them higher. Which is better depends on how often
            queries are about labels without training data, so ``jobs/calibrate.py`` chooses it on a
            validation hold-out (docs/notes/wordnet-cold-start.md).
        de_weight: weight of the DE cosine in the fused score ``de_weight · cos_DE + cos_CLF`` (evaluation,
            bundles and Serve; training is unaffected).
        cold_start_offset: added to the fused score of labels no training query is tagged with (a logit
            adjustment for the label shift when queries are often about such labels; see
            :mod:`xmc.scoring.fusion`). 0 = off. ``jobs/calibrate.py`` chooses both numbers on a
            validation hold-out.
        neighbour_weight: weight of the query-neighbour channel (:mod:`xmc.scoring.neighbours`): each
            query's top ``neighbour_candidates`` labels by the fused score are re-ranked by ``fused +
            neighbour_weight · neighbour``, where a label's neighbour score is the softmax weight (at
            ``neighbour_temperature``) of the query's ``neighbours`` nearest training queries tagged with it.
            0 = off (training is unaffected either way); ``jobs/calibrate.py`` chooses it on a validation
            hold-out, and a bundle exported with it > 0 carries the training queries it needs.
        scale: similarity scale 1/τ applied to both heads' cosines (18 ≈ τ 0.056).
        prototypes: score labels by PRIME prototypes (text embedding + free vector + centroid through a
            one-layer transformer) instead of by their text embedding alone.
        lpn_heads, lpn_ffn: attention heads and feed-forward width of that layer.
        free_vectors: clusters of labels sharing a free vector (0 = the power of two nearest L/2).
        centroid_update: ``ema`` of the batch's query embeddings every step, or ``exact`` recomputation from
            all training queries at each mining refresh.
        centroid_beta: EMA factor β (m ← β m + (1 − β) batch mean).
    """

    de_dim: int = 0
    de_activation: Literal["tanh", "none"] = "tanh"
    dropout: float = 0.1
    classifier: bool = True
    clf_dim: int = 0
    clf_init: Literal["label_text", "xavier"] = "label_text"
    clf_untrained: Literal["table", "label_text"] = "table"
    de_weight: float = 1.0
    cold_start_offset: float = 0.0
    neighbour_weight: float = 0.0
    neighbours: int = 20
    neighbour_temperature: float = 0.05
    neighbour_candidates: int = 100
    scale: float = 18.0
    prototypes: bool = False
    lpn_heads: int = 1
    lpn_ffn: int = 1024
    free_vectors: int = 0
    centroid_update: Literal["ema", "exact"] = "ema"
    centroid_beta: float = 0.95

    def validate(self) -> None:
        if not 0.0 <= self.centroid_beta < 1.0:
            raise ValueError(f"model.centroid_beta must be in [0, 1), got {self.centroid_beta}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.de_weight < 0:
            raise ValueError(f"model.de_weight must be >= 0, got {self.de_weight}")
        if self.scale <= 0:
            raise ValueError(f"model.scale must be > 0, got {self.scale}")
        if self.neighbour_weight < 0 or self.neighbours < 1 or self.neighbour_temperature <= 0 \
                or self.neighbour_candidates < 1:
            raise ValueError("model.neighbour_weight must be >= 0, model.neighbours and "
                             "model.neighbour_candidates >= 1, model.neighbour_temperature > 0; got "
                             f"{self.neighbour_weight}, {self.neighbours}, {self.neighbour_candidates}, "
                             f"{self.neighbour_temperature}")
