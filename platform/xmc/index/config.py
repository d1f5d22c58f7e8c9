"""How a trained run is exported for serving (kept free of torch imports so loading a config stays cheap)."""

from __future__ import annotations

from dataclasses import dataclass, field

from xmc.mining.ann import AnnConfig


@dataclass(kw_only=True)
class ExportConfig:
    """Args:
        shards: label index shards (contiguous ranges of label ids), each served by its own deployment.
        checkpoint: checkpoint directory name in the run to export ("" = the latest).
        ann: the faiss index built per shard: exact inner product (``flat``) below ``ann.exact_below``
            labels per shard, IVF above it (or ``ann.kind`` forces one); nprobe/efSearch are stored with it.
        encode_batch_size: texts per forward pass when encoding labels for the index.
    """

    shards: int = 1
    checkpoint: str = ""
    ann: AnnConfig = field(default_factory=AnnConfig)
    encode_batch_size: int = 256

    def validate(self) -> None:
        if self.shards < 1:
            raise ValueError(f"shards must be >= 1, got {self.shards}")
