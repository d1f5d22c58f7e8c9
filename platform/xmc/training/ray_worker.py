"""The training loop inside a Ray Train worker: its entry point and everything Ray-specific around it.

:func:`train_loop_per_worker` is what the ``TorchTrainer`` of :mod:`xmc.training.driver` runs on every
worker. :class:`RaySession` gives the loop Ray Train's device, DDP wrapper, checkpoints and reports.
Also here: fault injection for the retry test, and the record of a worker group's placement group that
Tune sweeps use to free what trials stopped early left reserved.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from xmc import storage
from xmc.config import from_dict
from xmc.experiment import ExperimentConfig
from xmc.training.session import Session
from xmc.training.trainer import Trainer

#: Fault injection for the failure tests: when this many steps are done, the worker crashes (FAIL) or stops
#: and waits for the test to take its node away (HANG); once, recorded in the marker file.
FAIL_AT_STEP_ENV = "XMC_TEST_FAIL_AT_STEP"
HANG_AT_STEP_ENV = "XMC_TEST_HANG_AT_STEP"
FAIL_MARKER_ENV = "XMC_TEST_FAIL_MARKER"

PLACEMENT_GROUP_FILE = "placement_group.txt"


class RaySession(Session):
    """The loop inside Ray Train (a worker of a ``TorchTrainer``, or its local mode)."""

    def __init__(self, world_size: int):
        super().__init__()
        self.world_size = world_size

    def device(self, use_gpu: bool) -> torch.device:
        if use_gpu:
            import ray.train.torch

            return ray.train.torch.get_device()
        return torch.device("cpu")

    def prepare_model(self, model: nn.Module) -> nn.Module:
        if self.world_size == 1:
            return model
        import ray.train.torch

        return ray.train.torch.prepare_model(model, move_to_device=False)

    @contextlib.contextmanager
    def latest_checkpoint(self) -> Iterator[Path | None]:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            yield None
            return
        with checkpoint.as_directory() as directory:
            yield Path(directory)

    def report(self, metrics: dict, checkpoint: Path | None = None, name: str | None = None) -> None:
        import ray.train

        if checkpoint is None:
            ray.train.report(metrics)
        else:
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(checkpoint)),
                             checkpoint_dir_name=name)

    def progress(self, total: int, desc: str, enabled: bool):
        if enabled and self.world_size > 1:
            from ray.experimental.tqdm_ray import tqdm as ray_tqdm

            return ray_tqdm(total=total, desc=desc)
        return super().progress(total, desc, enabled)

    def before_step(self, global_step: int) -> None:
        marker = os.environ.get(FAIL_MARKER_ENV)
        if not marker or Path(marker).exists():
            return
        if os.environ.get(FAIL_AT_STEP_ENV) == str(global_step):
            Path(marker).write_text(f"failed at step {global_step}\n")
            os._exit(17)
        if os.environ.get(HANG_AT_STEP_ENV) == str(global_step):
            Path(marker).write_text(f"stopped at step {global_step}\n")
            while True:  # until the test removes this worker's node
                time.sleep(1)


class LocalRaySession(Session):
    """The loop in Ray Train's local mode (``train.num_workers`` 0: the driver's process, no Ray cluster).

    Ray Train keeps a local-mode checkpoint nowhere, so this session writes checkpoints into the run's
    storage itself, as the in-process :class:`Session` does, and resumes from the latest one there; the
    metrics still go to Ray Train, so the job's result reports them.
    """

    def report(self, metrics: dict, checkpoint: Path | None = None, name: str | None = None) -> None:
        import ray.train

        super().report(metrics, checkpoint, name)
        ray.train.report(metrics)


def record_placement_group(run_location: str) -> None:
    """Write the id of this worker group's Ray placement group into the run's storage.

    A Tune trial stopped early by ASHA is killed, and Ray Train frees its workers' placement group only
    through a watcher that needs the dashboard's State API; :func:`xmc.tuning.sweep.release_placement_groups`
    uses these ids to free what such runs left reserved.
    """
    try:
        import ray
        import ray.util

        if not ray.is_initialized():  # local mode: asking would start a Ray just to answer None
            return
        group = ray.util.get_current_placement_group()
    except Exception:  # no Ray: nothing reserved
        return
    if group is not None:
        storage.write_text(storage.join(run_location, PLACEMENT_GROUP_FILE), group.id.hex() + "\n")


def train_loop_per_worker(loop_config: dict) -> None:
    """Ray Train's per-worker entry point: rebuild the typed config and run the loop."""
    from xmc.distributed import rank_and_world

    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # it logs each CPU variant it tries
    config = from_dict(ExperimentConfig, loop_config["config"])
    run_location = loop_config["run_location"]
    rank, world = rank_and_world()
    if rank == 0:
        record_placement_group(run_location)
    session = (RaySession(world) if config.train.num_workers > 0
               else LocalRaySession(run_location, keep=config.train.keep_checkpoints))
    trainer = Trainer(config, run_location, session)
    trainer.fit()
    trainer.reporter.close()
