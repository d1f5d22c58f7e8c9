"""When and how hard negatives and query clusters are refreshed during training."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(kw_only=True)
class AnnConfig:
    """Which faiss index to build over label vectors.

    Args:
        kind: ``auto`` (flat below ``exact_below`` vectors, ``large_kind`` above), ``flat``, ``ivf`` or
            ``hnsw``.
        exact_below: size threshold of ``auto``.
        large_kind: what ``auto`` builds above the threshold: ``ivf`` (cheap to build: mining rebuilds it
            every refresh) or ``hnsw`` (better recall per millisecond: serving builds it once).
        ivf_lists: IVF inverted lists; 0 = 4·sqrt(n), capped so each list trains on >= 39 points.
        ivf_nprobe: lists scanned per query (recall/latency knob).
        ivf_train_per_list: k-means training points per list (faiss warns below 39; 256 is its cap).
        hnsw_m: HNSW graph degree.
        hnsw_ef_search: HNSW search beam (recall/latency knob).
        use_gpu: search on the caller's GPU when it passes one (training workers do; export and serving
            build CPU indexes).
    """

    kind: Literal["auto", "flat", "ivf", "hnsw"] = "auto"
    exact_below: int = 1_000_000
    large_kind: Literal["ivf", "hnsw"] = "ivf"
    ivf_lists: int = 0
    ivf_nprobe: int = 32
    ivf_train_per_list: int = 256
    hnsw_m: int = 32
    hnsw_ef_search: int = 128
    use_gpu: bool = True


@dataclass(kw_only=True)
class MiningConfig:
    """Args:
        start_epoch: first epoch (0-based) that uses clustered batches and shortlists; random batches
            and in-batch negatives only before it.
        refresh_every: re-encode labels and training queries, rebuild the index, recompute shortlists
            and clusters every this many epochs from ``start_epoch``.
        shortlist_size: ANN candidates kept per training query (hard negatives are drawn from them).
        cluster_batches: form batches from balanced clusters of similar queries (else random batches).
        cluster_size: queries per cluster (0 = the batch size). Smaller clusters are packed several to a
            batch: batches then hold groups of very similar queries (NGAME/PRIME curriculum).
        cluster_size_doubling_epochs: epochs at which the cluster size doubles (capped at the batch size).
        ann: the label index used for mining.
    """

    start_epoch: int = 1
    refresh_every: int = 1
    shortlist_size: int = 32
    cluster_batches: bool = True
    cluster_size: int = 0
    cluster_size_doubling_epochs: list[int] = field(default_factory=list)
    ann: AnnConfig = field(default_factory=AnnConfig)

    def validate(self) -> None:
        if self.start_epoch < 0 or self.refresh_every < 1 or self.shortlist_size < 1:
            raise ValueError("mining.start_epoch must be >= 0, refresh_every and shortlist_size >= 1")

    def cluster_size_at(self, epoch: int, batch_size: int) -> int:
        if not self.cluster_size:
            return batch_size
        doublings = sum(1 for e in self.cluster_size_doubling_epochs if epoch >= e)
        return min(self.cluster_size * 2**doublings, batch_size)

    def refresh_due(self, epoch: int) -> bool:
        return epoch >= self.start_epoch and (epoch - self.start_epoch) % self.refresh_every == 0
