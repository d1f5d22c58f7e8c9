"""Optimizer groups and the learning-rate schedule.

Dense parameters (encoder, heads, prototype network) train with AdamW in four groups: encoder and heads,
each with and without weight decay (biases and norms get none; the heads a multiple of the encoder's rate).
Each label-sharded table (classifier rows, prototype free vectors) trains with SparseAdam on the rows a step
touched. One schedule scales every rate: linear warm-up, then linear decay to 0 at the last epoch.
"""

from __future__ import annotations

import torch
from torch import nn

from xmc.models.label_table import ShardedLabelTable
from xmc.training.config import TrainConfig


def lr_factor(progress: float, warmup_epochs: float, total_epochs: float) -> float:
    """Linear warm-up to 1 over ``warmup_epochs``, then linear decay to 0 at ``total_epochs``."""
    if warmup_epochs > 0 and progress < warmup_epochs:
        return max(progress / warmup_epochs, 1e-3)
    remaining = total_epochs - warmup_epochs
    return max(0.0, (total_epochs - progress) / remaining) if remaining > 0 else 1.0


def no_weight_decay(name: str) -> bool:
    return name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name or ".norm" in name


def param_groups(model: nn.Module, config: TrainConfig) -> list[dict]:
    """AdamW groups: encoder / heads × with / without weight decay."""
    groups: dict[str, list] = {key: [] for key in ("enc", "enc_nd", "head", "head_nd")}
    for name, param in model.named_parameters():
        head = not name.startswith("encoder.")
        groups[("head" if head else "enc") + ("_nd" if no_weight_decay(name) else "")].append(param)
    head_lr = config.lr * config.head_lr_multiplier
    return [
        {"params": groups["enc"], "lr": config.lr, "weight_decay": config.weight_decay},
        {"params": groups["enc_nd"], "lr": config.lr, "weight_decay": 0.0},
        {"params": groups["head"], "lr": head_lr, "weight_decay": config.weight_decay},
        {"params": groups["head_nd"], "lr": head_lr, "weight_decay": 0.0},
    ]


class Optimizers:
    """AdamW for the dense parameters and a SparseAdam per label-sharded table, stepped together.

    ``tables`` maps a checkpoint name (``table``, ``free``) to a table and its learning rate.
    """

    def __init__(self, model: nn.Module, config: TrainConfig,
                 tables: dict[str, tuple[ShardedLabelTable, float]]):
        self.model, self.config = model, config
        self.dense = torch.optim.AdamW(param_groups(model, config), lr=config.lr,
                                       weight_decay=config.weight_decay)
        self.tables = {name: (table, torch.optim.SparseAdam(table.parameters(), lr=lr))
                       for name, (table, lr) in tables.items()}
        for optimizer in self.all():
            for group in optimizer.param_groups:
                group["base_lr"] = group["lr"]

    def all(self) -> list[torch.optim.Optimizer]:
        return [self.dense, *(optimizer for _, optimizer in self.tables.values())]

    def zero_grad(self) -> None:
        for optimizer in self.all():
            optimizer.zero_grad(set_to_none=True)

    def step(self, progress: float) -> None:
        """Average the tables' gradients over workers (DDP averages the dense ones), clip, set the
        scheduled rates for ``progress`` (in epochs) and step."""
        for table, _ in self.tables.values():
            table.average_gradients()
        if self.config.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)
        factor = lr_factor(progress, self.config.warmup_epochs, self.config.epochs)
        for optimizer in self.all():
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * factor
            optimizer.step()

    def load_dense_state(self, state: dict) -> None:
        """Restore AdamW; its saved groups carry the base rates that the schedule scales."""
        self.dense.load_state_dict(state)
        for group in self.dense.param_groups:
            group["base_lr"] = group.get("base_lr", group["lr"])
