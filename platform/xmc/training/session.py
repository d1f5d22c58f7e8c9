"""Where the training loop meets the process that runs it: the device, the DDP wrapper, checkpoints,
reports and progress bars.

:class:`Session` runs the loop in this process without Ray: checkpoints are directories under
``checkpoint_root`` and reports are kept in a list. Tests and debugging use it; Ray Train's workers use
:class:`xmc.training.ray_worker.RaySession`, which hands the same directories and reports to Ray Train.
The trainer never imports Ray.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from xmc.checkpoint import CHECKPOINT_PREFIX, LOOP
from xmc.io import atomic_dir


class Session:
    """A loop in this process (one worker). ``checkpoint_root`` receives the checkpoints (None: the run
    keeps none), and the latest one there is what a new loop resumes from."""

    def __init__(self, checkpoint_root: str | Path | None = None):
        self.checkpoint_root = Path(checkpoint_root) if checkpoint_root is not None else None
        self.reports: list[tuple[dict, str | None]] = []  # (metrics, checkpoint name) of every report

    def device(self, use_gpu: bool) -> torch.device:
        return torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """The model as the loop's forward and backward call it (the DDP wrapper with several workers)."""
        return model

    @contextlib.contextmanager
    def latest_checkpoint(self) -> Iterator[Path | None]:
        """The directory of the checkpoint to resume from, or None for a fresh start."""
        found = []
        if self.checkpoint_root is not None and self.checkpoint_root.is_dir():
            found = sorted(p for p in self.checkpoint_root.glob(f"{CHECKPOINT_PREFIX}*")
                           if (p / f"{LOOP}.json").is_file())
        yield found[-1] if found else None

    def report(self, metrics: dict, checkpoint: Path | None = None, name: str | None = None) -> None:
        """Record ``metrics``, with the checkpoint written to ``checkpoint`` (kept as ``name``)."""
        self.reports.append((dict(metrics), name if checkpoint is not None else None))
        if checkpoint is not None and self.checkpoint_root is not None:
            with atomic_dir(self.checkpoint_root / name) as tmp:
                shutil.copytree(checkpoint, tmp, dirs_exist_ok=True)

    def progress(self, total: int, desc: str, enabled: bool):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, disable=not enabled, mininterval=5.0, unit="step")

    def before_step(self, global_step: int) -> None:
        """Called before every training step (fault injection hooks in here)."""
