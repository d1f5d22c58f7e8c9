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
        dtype: ``auto`` = float32 on CPU, bfloat16 on CUDA.
    """

    model: str = DEFAULT_MODEL
    pooling: Literal["mean", "cls"] = "mean"
    batch_size: int = 256
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
