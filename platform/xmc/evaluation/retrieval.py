"""Top-k retrieval by inner product, and the zero-shot baseline built on it."""

from __future__ import annotations

import numpy as np
import torch

from xmc.data.config import DatasetConfig
from xmc.data.dataset import PreparedDataset
from xmc.data.lengths import token_cache
from xmc.evaluation.config import EvalConfig
from xmc.mining.ann import build_index, search
from xmc.models.config import EncoderConfig
from xmc.models.encoder import (
    TextEncoder,
    default_device,
    encode_tokens,
    normalized,
    precision_dtype,
    resolve_model_dir,
)


def predict_topk(query_vectors: np.ndarray, label_vectors: np.ndarray, config: EvalConfig, device=None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Top-``config.top_k`` labels per query by inner product: ``(indices int64, scores float32)``; the search
    runs on ``device`` when it is a GPU (see :func:`xmc.mining.ann.build_index`)."""
    index = build_index(label_vectors, config.ann, device=device)
    scores, indices = search(index, query_vectors, config.top_k)
    return indices, scores


def zero_shot_predict(dataset: PreparedDataset, data_config: DatasetConfig, encoder_config: EncoderConfig,
                      eval_config: EvalConfig, split: str = "test", progress: bool = True,
                      rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Encode labels and ``split`` queries (``rows`` of it; default all) with the pre-trained encoder and
    retrieve by cosine similarity."""
    model_dir = resolve_model_dir(encoder_config.model)
    cache = token_cache(dataset, data_config, model_dir, progress=progress)
    device = default_device()
    encoder = TextEncoder(model_dir, encoder_config.pooling, encoder_config.group_by_length).to(device).eval()
    embed = normalized(encoder)
    dtype = precision_dtype(encoder_config.dtype, device)
    with torch.inference_mode():
        labels = encode_tokens(embed, *cache.arrays("labels"), batch_size=encoder_config.batch_size,
                               device=device, dtype=dtype, desc="encode labels", progress=progress)
        queries = encode_tokens(embed, *cache.arrays(split), batch_size=encoder_config.batch_size,
                                device=device, dtype=dtype, desc=f"encode {split}", progress=progress,
                                rows=rows)
    return predict_topk(queries, labels, eval_config)
