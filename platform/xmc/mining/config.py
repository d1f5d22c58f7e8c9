"""When and how hard negatives and query clusters are refreshed during training."""

from __future__ import annotations

from dataclasses import dataclass, field

from xmc.mining.ann import AnnConfig


@dataclass(kw_only=True)
class MiningConfig:
    """Args:
        start_epoch: first epoch (0-based) that uses clustered batches and shortlists; random batches
            and in-batch negatives only before it.
        refresh_every: re-encode labels and training queries, rebuild the index, recompute shortlists
            and clusters every this many epochs from ``start_epoch``.
        shortlist_size: ANN candidates kept per training query (hard negatives are drawn from them).
        cluster_batches: form batches from balanced clusters of similar queries (else random batches).
        ann: the label index used for mining.
    """

    start_epoch: int = 1
    refresh_every: int = 1
    shortlist_size: int = 32
    cluster_batches: bool = True
    ann: AnnConfig = field(default_factory=AnnConfig)

    def validate(self) -> None:
        if self.start_epoch < 0 or self.refresh_every < 1 or self.shortlist_size < 1:
            raise ValueError("mining.start_epoch must be >= 0, refresh_every and shortlist_size >= 1")

    def refresh_due(self, epoch: int) -> bool:
        return epoch >= self.start_epoch and (epoch - self.start_epoch) % self.refresh_every == 0
