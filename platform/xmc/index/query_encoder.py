"""The query side of a bundle: the scoring model without label state, raw text in, search vector out."""

from __future__ import annotations

from pathlib import Path

import torch

from xmc.models.config import HeadsConfig
from xmc.models.encoder import TextEncoder, freeze_for_inference
from xmc.models.xmc_model import XMCModel
from xmc.scoring.model import ScoringModel


def load_query_model(bundle_dir: Path, settings: dict, device: str = "cpu") -> ScoringModel:
    """The bundle's query tower: tokenises like the training token cache (same tokenizer, truncation at
    ``max_len``) and embeds with the fine-tuned encoder and heads, ``[q_DE ; q_CLF]`` when the model has a
    classifier, and a constant 1 last when the bundle's labels carry a cold-start offset column.

    On a CPU the backbone runs as a TorchScript-frozen graph; Serve and ``jobs/evaluate.py --bundle`` both
    load it here, so they encode alike. (On a GPU the eager model keeps its bf16 autocast.)
    """
    from safetensors.torch import load_file

    encoder_dir = Path(bundle_dir) / "encoder"
    heads = HeadsConfig(**{**settings["heads"], "prototypes": False, "dropout": 0.0})
    model = XMCModel(TextEncoder(encoder_dir, settings["pooling"]), heads)
    missing, unexpected = model.load_state_dict(load_file(str(Path(bundle_dir) / "heads.safetensors")),
                                                strict=False)
    if unexpected or any(not name.startswith("encoder.") for name in missing):
        raise ValueError(f"heads.safetensors does not fit the model: "
                         f"missing {missing}, unexpected {unexpected}")
    device = torch.device(device)
    model.to(device).eval()
    if device.type == "cpu":
        freeze_for_inference(model.encoder)
    return ScoringModel(model, max_len=int(settings["max_len"]),
                        batch_size=int(settings.get("batch_size", 256)), device=device)
