"""Settings of the training loop, its label pool, its scaling on Ray Train, and where a run writes its
outputs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(kw_only=True)
class TrainConfig:
    """Args:
        num_workers: Ray Train workers (0 = run the loop in the driver process, Ray Train's local mode).
        use_gpu: train on a GPU: one per worker, or a share of one (``gpus_per_worker``).
        gpus_per_worker: the share of a GPU each worker asks Ray for with ``use_gpu`` (0 < share <= 1): 0.3
            lets three small runs or Tune trials train side by side on one GPU. The card is time-shared, so
            this pays when the runs have CPU phases (mining, evaluation) to overlap.
        cpus_per_worker: CPU resource each worker asks Ray for (0.99 lets a Tune trial's 0.01 fit beside it).
        worker_resources: custom Ray resources each worker also asks for, e.g. ``{trainer: 1}`` to put
            workers only on the nodes started with that resource.
        threads_per_worker: torch and faiss threads per worker (0 = the machine's cores divided among the
            workers); set it when several runs share one machine.
        epochs, batch_size: schedule; ``batch_size`` is global (split across workers).
        steps: a step budget instead of ``epochs`` (0 = use ``epochs``): the run trains the fewest whole
            epochs that make this many steps, chosen when it starts and recorded in ``adapted``.
        lr: encoder learning rate; the heads get ``lr × head_lr_multiplier``, the label table
            ``classifier_lr``, prototype free vectors ``prototype_lr``.
        weight_decay: AdamW decay (not on biases and LayerNorm weights).
        warmup_epochs: linear warm-up length, then linear decay to 0 at the end.
        max_grad_norm: gradient clipping of the dense parameters (0 = off).
        precision: ``auto`` = bf16 autocast on GPU, fp32 on CPU.
        checkpoint_every_steps: also checkpoint every this many steps inside an epoch (0 = at epoch ends).
        keep_checkpoints: checkpoints kept in the run directory.
        max_failures: worker-group restarts from the last checkpoint before the run fails.
        eval_every: evaluate on the test split every this many epochs (0 = only after the last).
        calibrate: with a validation hold-out (``dataset.validation_fraction`` > 0), choose the fused-score
            settings on it when training ends (``jobs/calibrate.py``'s grid; export applies them).
        max_steps_per_epoch: cap on steps per epoch (0 = the whole training set), for smoke runs.
        seed: seeds model init, batch order, pools and dropout.
        progress: progress bars.
    """

    num_workers: int = 1
    use_gpu: bool = False
    gpus_per_worker: float = 1.0
    cpus_per_worker: float = 0.99
    worker_resources: dict[str, float] = field(default_factory=dict)
    threads_per_worker: int = 0
    epochs: int = 4
    steps: int = 0
    batch_size: int = 256
    lr: float = 1e-4
    head_lr_multiplier: float = 2.0
    classifier_lr: float = 1e-3
    prototype_lr: float = 5e-4
    weight_decay: float = 0.05
    warmup_epochs: float = 0.5
    max_grad_norm: float = 0.0
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    checkpoint_every_steps: int = 0
    keep_checkpoints: int = 2
    max_failures: int = 1
    eval_every: int = 1
    calibrate: bool = True
    max_steps_per_epoch: int = 0
    seed: int = 0
    progress: bool = True

    def validate(self) -> None:
        if self.num_workers < 0:
            raise ValueError(f"train.num_workers must be >= 0, got {self.num_workers}")
        if self.epochs < 1 or self.batch_size < 1 or self.steps < 0:
            raise ValueError("train.epochs and train.batch_size must be >= 1, train.steps >= 0")
        if not 0 < self.gpus_per_worker <= 1:
            raise ValueError(f"train.gpus_per_worker must be in (0, 1] (a worker uses one GPU), "
                             f"got {self.gpus_per_worker}")
        if self.use_gpu and self.num_workers > 1 and self.gpus_per_worker < 1:
            raise ValueError(f"train.gpus_per_worker is {self.gpus_per_worker} with {self.num_workers} "
                             "workers: Ray could put several of them on one GPU, and NCCL cannot run two "
                             "ranks of one group on the same GPU; give each worker a whole GPU (1.0), or "
                             "share GPUs between runs or Tune trials of one worker each")
        if self.batch_size < max(self.num_workers, 1):
            raise ValueError(f"train.batch_size ({self.batch_size}) must be >= train.num_workers")


@dataclass(kw_only=True)
class RunSection:
    """Args:
        name: run name; the run directory is ``storage/name``. Rerunning with the same name resumes it.
        storage: directory holding run directories (relative paths resolve against $XMC_WORKDIR or cwd).
        ray_address: Ray cluster to use; empty = $RAY_ADDRESS when set (``ray job submit``), else a local
            Ray on 127.0.0.1 started for the job.
    """

    name: str = ""
    storage: str = "runs"
    ray_address: str = ""


@dataclass(kw_only=True)
class PoolConfig:
    """How a step's label pool is built.

    Args:
        positives: sampled positives per query, or ``"all"``.
        positive_sampling: ``uniform`` or ``inverse_propensity`` (weights 1/p_l of the dataset config).
        hard_negatives: labels drawn per query from its shortlist (0 = none; only after mining starts).
        fill_with_batch_positives: add the batch's unsampled positives when there is room.
        max_size: cap on the pool size (the main compute knob).
        all_labels: score every step against all L labels (DEXML); label embeddings are computed with
            gradient caching in chunks of ``label_chunk`` (the other pool settings are then unused).
        label_chunk: labels encoded per chunk in all-labels mode (activation memory knob).
    """

    positives: int | Literal["all"] = 3
    positive_sampling: Literal["uniform", "inverse_propensity"] = "uniform"
    hard_negatives: int = 6
    fill_with_batch_positives: bool = True
    max_size: int = 2048
    all_labels: bool = False
    label_chunk: int = 1024

    def validate(self) -> None:
        if self.positives != "all" and self.positives < 1:
            raise ValueError(f"pool.positives must be >= 1 or 'all', got {self.positives}")
        if self.hard_negatives < 0:
            raise ValueError(f"pool.hard_negatives must be >= 0, got {self.hard_negatives}")
        if self.max_size < 1:
            raise ValueError(f"pool.max_size must be >= 1, got {self.max_size}")
