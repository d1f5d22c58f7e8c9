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
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from xmc import storage
from xmc.checkpoint import CHECKPOINT_PREFIX, LOOP
from xmc.io import atomic_dir


class Session:
    """A loop in this process (one worker). ``checkpoint_root`` (a path or a storage URI) receives the
    checkpoints (None: the run keeps none), and the latest one there is what a new loop resumes from."""

    def __init__(self, checkpoint_root: str | Path | None = None, keep: int | None = None):
        """``keep``: the checkpoints kept under ``checkpoint_root``, the latest ones (None: all)."""
        self.checkpoint_root = storage.resolve(checkpoint_root) if checkpoint_root is not None else None
        self.keep = keep
        self.reports: list[tuple[dict, str | None]] = []  # (metrics, checkpoint name) of every report

    def device(self, use_gpu: bool) -> torch.device:
        return torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """The model as the loop's forward and backward call it (the DDP wrapper with several workers)."""
        return model

    @contextlib.contextmanager
    def latest_checkpoint(self) -> Iterator[Path | None]:
        """The directory of the checkpoint to resume from, or None for a fresh start."""
        root, found = self.checkpoint_root, []
        if root is not None:
            found = [name for name in storage.list_dir(root) if name.startswith(CHECKPOINT_PREFIX)
                     and storage.is_file(storage.join(root, name, f"{LOOP}.json"))]
        if not found:
            yield None
            return
        latest = storage.join(self.checkpoint_root, found[-1])
        if storage.is_local(latest):
            yield storage.local_path(latest)
            return
        with tempfile.TemporaryDirectory(prefix="xmc-resume-") as tmp:
            yield storage.download_dir(latest, tmp)

    def report(self, metrics: dict, checkpoint: Path | None = None, name: str | None = None) -> None:
        """Record ``metrics``, with the checkpoint written to ``checkpoint`` (kept as ``name``)."""
        self.reports.append((dict(metrics), name if checkpoint is not None else None))
        if checkpoint is None or self.checkpoint_root is None:
            return
        target = storage.join(self.checkpoint_root, name)
        if storage.is_local(target):
            with atomic_dir(storage.local_path(target)) as tmp:
                shutil.copytree(checkpoint, tmp, dirs_exist_ok=True)
        else:  # the loop state goes last: a checkpoint without it is not taken for one
            storage.upload_dir(checkpoint, target, last=(f"{LOOP}.json",))
        if self.keep:
            self.prune(self.keep)

    def prune(self, keep: int) -> None:
        """Delete all but the latest ``keep`` checkpoints under ``checkpoint_root`` (names sort by epoch, then
        step), once the new one is complete."""
        names = sorted(name for name in storage.list_dir(self.checkpoint_root)
                       if name.startswith(CHECKPOINT_PREFIX))
        for name in names[:-keep]:
            storage.remove_dir(storage.join(self.checkpoint_root, name))

    def progress(self, total: int, desc: str, enabled: bool):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, disable=not enabled, mininterval=5.0, unit="step")

    def before_step(self, global_step: int) -> None:
        """Called before every training step (fault injection hooks in here)."""
