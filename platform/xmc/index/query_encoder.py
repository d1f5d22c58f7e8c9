"""The query side of a bundle: raw text in, the vector the label index is searched with out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from xmc.evaluation.calibration import has_offset_column, query_vectors
from xmc.models.config import HeadsConfig
from xmc.models.encoder import (TextEncoder, encode_tokens, freeze_for_inference, load_tokenizer,
                                tokenize_texts)
from xmc.models.xmc_model import XMCModel


class QueryEncoder:
    """Tokenises like the training token cache (same tokenizer, truncation at ``max_len``) and embeds with the
    trained encoder and heads: ``[q_DE ; q_CLF]`` when the model has a classifier, else ``q_DE``, and a
    constant 1 last when the bundle's labels carry a cold-start offset column (:mod:`xmc.evaluation.calibration`)."""

    def __init__(self, bundle_dir: Path, settings: dict, device: str = "cpu"):
        self.max_len = int(settings["max_len"])
        self.batch_size = int(settings.get("batch_size", 256))
        self.device = torch.device(device)
        encoder_dir = Path(bundle_dir) / "encoder"
        self.tokenizer = load_tokenizer(encoder_dir)
        heads = HeadsConfig(**{**settings["heads"], "prototypes": False, "dropout": 0.0})
        self.model = XMCModel(TextEncoder(encoder_dir, settings["pooling"]), heads)
        from safetensors.torch import load_file

        missing, unexpected = self.model.load_state_dict(load_file(str(Path(bundle_dir) / "heads.safetensors")),
                                                         strict=False)
        if unexpected or any(not name.startswith("encoder.") for name in missing):
            raise ValueError(f"heads.safetensors does not fit the model: missing {missing}, unexpected {unexpected}")
        self.model.to(self.device).eval()
        if self.device.type == "cpu":  # Serve and jobs/evaluate.py --bundle both run this graph
            freeze_for_inference(self.model.encoder)  # (on a GPU the eager model keeps its bf16 autocast)
        self.embed = self.model.embed_both if heads.classifier else self.model.embed_de
        self.cold_start_offset = heads.cold_start_offset
        self.dim = self.model.de_dim + self.model.clf_dim + int(has_offset_column(heads.cold_start_offset))

    def encode(self, texts: list[str]) -> np.ndarray:
        """``float32 [len(texts), dim]`` query vectors."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        ids, lengths = tokenize_texts(self.tokenizer, texts, self.max_len)
        with torch.inference_mode():
            vectors = encode_tokens(self.embed, ids, lengths, batch_size=self.batch_size, device=self.device,
                                    progress=False)
        return query_vectors(vectors, self.cold_start_offset)
