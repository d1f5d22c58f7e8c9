"""What a checkpoint holds for a resumed run, and how each worker writes and restores its part.

The layout is :mod:`xmc.checkpoint`'s. Rank 0 writes the dense model, AdamW, the loop state and the
label-level state; every worker writes its rows of the label-sharded tables (with their SparseAdam moments),
its centroids and its random generators. Restoring re-splits the rows for the current number of workers,
so a run may resume on more or fewer workers. Nothing here talks to Ray: the trainer hands the directory
to Ray Train (:mod:`xmc.training.session`).
"""

from __future__ import annotations

from pathlib import Path

from xmc import checkpoint as ckpt
from xmc.scoring.model import ScoringModel
from xmc.training.optim import Optimizers


class CheckpointManager:
    def __init__(self, scoring: ScoringModel, optimizers: Optimizers):
        self.scoring, self.optimizers = scoring, optimizers
        self.rank = scoring.rank

    def save(self, directory: str | Path, loop_state: dict) -> None:
        """Write this worker's part of a checkpoint of the current state into ``directory``."""
        directory = Path(directory)
        if self.rank == 0:
            ckpt.save_state(directory, ckpt.MODEL, self.scoring.model.state_dict())
            ckpt.save_state(directory, ckpt.OPTIMIZER, self.optimizers.dense.state_dict())
            ckpt.save_state(directory, ckpt.LOOP, loop_state)
            ckpt.save_state(directory, ckpt.LABELS, self.scoring.label_state())
        for name, (table, optimizer) in self.optimizers.tables.items():
            weight = table.rows.weight
            ckpt.save_state(directory, ckpt.shard_name(name, self.rank),
                            {"owned": table.owned, "weight": weight.detach(),
                             **optimizer.state.get(weight, {})})
        prototypes = self.scoring.prototypes
        if prototypes is not None:
            ckpt.save_state(directory, ckpt.shard_name("centroids", self.rank),
                            {"owned": prototypes.centroids.owned, "rows": prototypes.centroids.rows})
        ckpt.save_state(directory, ckpt.shard_name("rng", self.rank), ckpt.rng_state())

    def load(self, directory: str | Path) -> dict:
        """Restore everything from ``directory`` and return the loop state saved with it."""
        directory = Path(directory)
        read = self.scoring.load_checkpoint_weights(directory, keys=("weight", "exp_avg", "exp_avg_sq"))
        self.optimizers.load_dense_state(ckpt.load_state(directory, ckpt.OPTIMIZER))
        for name, (table, optimizer) in self.optimizers.tables.items():
            rows = read[name]
            if "exp_avg" in rows:  # a table that never stepped has no moments yet
                device = table.rows.weight.device
                optimizer.state[table.rows.weight] = {"step": rows["step"],
                                                      "exp_avg": rows["exp_avg"].to(device),
                                                      "exp_avg_sq": rows["exp_avg_sq"].to(device)}
        rng = ckpt.shard_name("rng", self.rank)
        # a run resumed on more workers than it saved: the new ranks take rank 0's generators
        ckpt.set_rng_state(ckpt.load_state(directory, rng if ckpt.has_state(directory, rng)
                                           else ckpt.shard_name("rng", 0)))
        return ckpt.load_state(directory, ckpt.LOOP)
