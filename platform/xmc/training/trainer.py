"""The per-worker training loop: the same code on 1 or N workers, CPU or GPU.

The trainer builds a worker's components from the config and runs them in order; each component is a
module of its own:

- data and hold-out ............ :class:`~xmc.training.data.TrainingData`
- model and label state ........ :class:`~xmc.scoring.model.ScoringModel` (also what inference loads)
- optimizers and LR schedule ... :class:`~xmc.training.optim.Optimizers`
- mining, clusters, batches .... :class:`~xmc.training.epoch_plan.EpochPlanner`
- the label pool of a step ..... :func:`~xmc.training.pool.build_label_pool`
- one step's loss and backward . :mod:`xmc.training.steps` (pool or all labels) and
  :func:`~xmc.losses.objective.step_loss`
- evaluation ................... :func:`~xmc.evaluation.evaluator.evaluate_model`
- checkpoints .................. :class:`~xmc.training.checkpoint.CheckpointManager`
- run outputs .................. :class:`~xmc.training.reporting.RunReporter`
- Ray Train (device, DDP, reports, fault injection) ... a :class:`~xmc.training.session.Session`

A step's randomness is seeded by (seed, epoch, step) and the state a resumed run needs is checkpointed at
epoch ends (and every ``train.checkpoint_every_steps`` steps), so a resumed run repeats exactly what an
uninterrupted one does.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.profiler import record_function

from xmc.data.dataset import PreparedDataset
from xmc.distributed import gather_rows, mean_over_workers, rank_and_world
from xmc.evaluation.evaluator import evaluate_model
from xmc.experiment import ExperimentConfig
from xmc.memory import PhaseMeter
from xmc.mining.batches import BatchPlan
from xmc.scoring.model import ScoringModel
from xmc.scoring.neighbours import training_memory
from xmc.training.adapt import adapt_to_data
from xmc.training.checkpoint import CheckpointManager
from xmc.training.data import TrainingData
from xmc.training.epoch_plan import EpochPlanner
from xmc.training.initialise import classifier_from_label_text, prototypes_from_label_text
from xmc.training.optim import Optimizers
from xmc.training.pool import LabelPool, build_label_pool
from xmc.training.reporting import RunReporter
from xmc.training.session import Session
from xmc.training.steps import AllLabelsStep, PoolStep


def set_threads(threads: int) -> None:
    """Bound torch's and faiss's thread pools (mining and evaluation search with faiss's own OpenMP pool)."""
    import faiss

    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)


#: The phases whose time and peak memory every epoch record carries (``history.jsonl`` ``phases``).
PHASES = ("initialise", "restore", "mining", "steps", "evaluation", "checkpoint")


class Trainer:
    """Builds everything a worker needs from the config and runs (or resumes) the training loop."""

    def __init__(self, config: ExperimentConfig, run_location: str | Path, session: Session | None = None):
        """``run_location``: where the run's files go (a path or a storage URI; checkpoints go through the
        session)."""
        self.meter = PhaseMeter()  # first: its lifetime peak covers everything the worker loads
        # the driver has adapted the config already; a loop started without it chooses the same itself
        config = adapt_to_data(config, PreparedDataset(config.dataset.prepared))
        self.config, self.session = config, session or Session()
        cfg = config.train
        self.rank, self.world = rank_and_world()
        device = self.session.device(cfg.use_gpu)
        set_threads(cfg.threads_per_worker or max(1, (os.cpu_count() or 1) // max(cfg.num_workers, 1)))
        self.data = TrainingData.load(config, progress=self.rank == 0 and cfg.progress)

        torch.manual_seed(cfg.seed)
        self.scoring = ScoringModel.build(config, self.data.num_labels,
                                          label_tokens=self.data.cache.arrays("labels"),
                                          cold_start=self.data.cold_start, rank=self.rank,
                                          world_size=self.world, device=device)
        self.scoring.model.train()  # from_pretrained returns the backbone in eval mode (dropout off)
        ddp_model = self.session.prepare_model(self.scoring.model)
        rates = {"table": cfg.classifier_lr, "free": cfg.prototype_lr}
        self.optimizers = Optimizers(self.scoring.model, cfg, {name: (table, rates[name]) for name, table
                                                               in self.scoring.label_tables().items()})
        self.planner = EpochPlanner(config, self.data, self.scoring)
        step_kind = AllLabelsStep if config.pool.all_labels else PoolStep
        self.step = step_kind(config, self.data, self.scoring, ddp_model)
        self.checkpoints = CheckpointManager(self.scoring, self.optimizers)
        self.reporter = RunReporter(run_location, enabled=self.rank == 0)

        # loop state (checkpointed)
        self.epoch = self.step_in_epoch = self.global_step = 0
        self.plan: BatchPlan | None = None
        self.loss_sum, self.loss_count = 0.0, 0
        self.reported: dict = {}  # what the last checkpoint reported, so a finished run can say it again
        self.epoch_started = time.time()

    # ------------------------------------------------------------------------------------------------------
    # the loop

    def fit(self) -> None:
        """Resume from the session's latest checkpoint or start fresh, then train to ``train.epochs``."""
        cfg = self.config.train
        if self.resume():
            if self.rank == 0:
                print(f"resumed from checkpoint at epoch {self.epoch} step {self.global_step} "
                      f"({self.step_in_epoch} steps into the epoch)", flush=True)
            if self.epoch >= cfg.epochs:
                # A rerun of a finished run (e.g. a Tune trial killed after its last checkpoint but before
                # Tune recorded it) trains nothing; it reports the final metrics again so the caller has them.
                self.session.report(self.reported)
                return
        else:
            with self.meter.phase("initialise"):
                self.initialise()
        while self.epoch < cfg.epochs:
            self.run_epoch()

    def initialise(self) -> None:
        """A fresh run's label-side state from the label texts."""
        if self.scoring.classifier is not None and self.config.model.clf_init == "label_text":
            classifier_from_label_text(self.scoring)
        if self.scoring.prototypes is not None:
            prototypes_from_label_text(self.scoring, self.data, self.config.train.seed)

    def start_epoch(self) -> None:
        self.epoch_started = time.time()
        # the refresh is normally made at the end of the epoch before (see end_epoch); this one is for the
        # first epoch, and for a run resumed from a checkpoint written before that refresh
        if self.config.mining.refresh_due(self.epoch) and self.planner.refreshed_for != self.epoch:
            with self.meter.phase("mining"):
                self.planner.refresh(self.epoch)
        self.plan = self.planner.plan(self.epoch)
        self.loss_sum, self.loss_count = 0.0, 0

    def run_epoch(self) -> None:
        cfg = self.config.train
        if self.plan is None:
            self.start_epoch()
        bar = self.session.progress(len(self.plan), f"epoch {self.epoch + 1}/{cfg.epochs}",
                                    enabled=self.rank == 0 and cfg.progress)
        bar.update(self.step_in_epoch)
        while self.step_in_epoch < len(self.plan):
            self.session.before_step(self.global_step)
            with self.meter.phase("steps"):
                loss = self.train_step(self.plan.batch(self.step_in_epoch))
            self.step_in_epoch += 1
            self.global_step += 1
            self.loss_sum += loss
            self.loss_count += 1
            bar.update(1)
            if self.global_step % 10 == 0:
                self.reporter.scalar("train/loss", loss, self.global_step)
            every = cfg.checkpoint_every_steps
            if every and self.global_step % every == 0 and self.step_in_epoch < len(self.plan):
                self.save_checkpoint({"epoch": self.epoch, "step": self.global_step, "loss": loss})
        bar.close()
        self.end_epoch()

    def end_epoch(self) -> None:
        """Evaluate (when due), make the next epoch's mining refresh while the weights are the evaluated ones
        (the refresh searches the evaluation's label index instead of encoding the labels again, and the
        checkpoint that follows holds the next epoch's plan, so a resumed run does not mine again), then
        checkpoint with the metrics."""
        cfg = self.config.train
        mean_loss = self.loss_sum / max(self.loss_count, 1)
        seconds = round(time.time() - self.epoch_started, 1)
        final = self.epoch + 1 == cfg.epochs
        due = final or (cfg.eval_every and (self.epoch + 1) % cfg.eval_every == 0)
        evaluation = self.evaluate(final) if due else None
        if not final and self.config.mining.refresh_due(self.epoch + 1):
            with self.meter.phase("mining"):
                self.planner.refresh(self.epoch + 1)
        self.scoring.release_label_vectors()  # a checkpoint holds the table state and nothing more
        record = {"epoch": self.epoch + 1, "loss": mean_loss, "steps": self.loss_count, "seconds": seconds,
                  **self.phase_record()}
        self.epoch += 1
        self.step_in_epoch = 0
        self.plan = None
        self.reporter.epoch_end(record, evaluation, self.global_step)
        # reported to Ray (and Tune): the main predictor's metrics; every variant is in metrics.json
        metrics = {"epoch": self.epoch, "step": self.global_step, "loss": mean_loss}
        if evaluation:
            metrics.update(evaluation.get("fused") or evaluation["de"])
        if self.rank == 0:
            line = f"epoch {self.epoch}/{cfg.epochs}: loss {mean_loss:.4f} ({record['seconds']}s)"
            if evaluation:
                shown = ", ".join(f"{k} {metrics[k]:.2f}" for k in ("P@1", "P@5", "PSP@1"))
                line += f"; {self.config.eval.split} {shown}"
            print(line, flush=True)
        self.save_checkpoint(metrics)
        # the checkpoint's own cost joins the epoch's record
        self.reporter.amend_epoch(record["epoch"], self.phase_record(record["phases"]))

    def phase_record(self, earlier: dict | None = None) -> dict:
        """Each worker's peak memory so far and the time and peak memory of the phases since the last record
        (``earlier``: phases already recorded for this epoch, kept), rank by rank (a collective): what a run
        at the edge of a machine's memory needs to see, phase by phase."""
        mine = self.meter.take()
        values = np.full((len(PHASES) + 1, 2), np.nan)
        values[0] = self.meter.lifetime_mib, 0.0
        for row, name in enumerate(PHASES, start=1):
            if name in mine:
                values[row] = mine[name]["peak_rss_mib"], mine[name]["seconds"]
        gathered = gather_rows(values[None], self.scoring.device)  # [workers, phases + 1, 2]
        phases = dict(earlier or {})
        for row, name in enumerate(PHASES, start=1):
            if not np.isnan(gathered[:, row, 0]).all():
                phases[name] = {"seconds": round(float(np.nanmax(gathered[:, row, 1])), 1),
                                "peak_rss_mib": [round(float(v), 1) for v in gathered[:, row, 0]]}
        return {"peak_rss_mib": [round(float(v), 1) for v in gathered[:, 0, 0]], "phases": phases}

    # ------------------------------------------------------------------------------------------------------
    # one step

    def step_pool(self, batch: np.ndarray) -> LabelPool:
        """The current step's label pool; seeded by (seed, epoch, step) so every worker builds the same."""
        cfg = self.config
        rng = np.random.default_rng([cfg.train.seed, self.epoch, self.step_in_epoch, 3])
        return build_label_pool(batch, self.data.positives, cfg.pool, rng,
                                self.planner.shortlists_for(self.epoch), self.data.label_weights)

    def step_generator(self) -> torch.Generator:
        """Randomness of the loss (positive draws); per (seed, epoch, step, worker), so a resumed run
        repeats it."""
        seed = ((self.config.train.seed * 1_000_003 + self.epoch * 10_007 + self.step_in_epoch) * 64
                + self.rank)
        return torch.Generator(device=self.scoring.device).manual_seed(seed)

    def train_step(self, batch: np.ndarray) -> float:
        """One optimizer step on the global batch ``batch``; returns the loss averaged over workers."""
        pool = None if self.config.pool.all_labels else self.step_pool(batch)
        self.optimizers.zero_grad()
        loss = self.step(batch, pool, self.step_generator())
        with record_function("xmc.optimizer"):
            self.optimizers.step(self.epoch + self.step_in_epoch / max(len(self.plan), 1))
        self.scoring.weights_changed()
        return mean_over_workers(float(loss), self.scoring.device)

    # ------------------------------------------------------------------------------------------------------
    # evaluation and checkpoints

    def evaluate(self, final: bool) -> dict[str, dict[str, float]] | None:
        """DE-only, classifier-only and fused metrics on ``eval.split`` (rank 0; None on the others); the
        final evaluation also writes the fused predictions."""
        split = self.data.split
        if self.config.eval.split == "validation":
            name, rows = "train", split.validation_rows
        else:
            name, rows = "test", None
        with self.meter.phase("evaluation"):
            neighbours = None
            if self.scoring.heads.neighbour_weight and self.rank == 0:  # the channel ranks on rank 0
                neighbours = training_memory(self.scoring, self.data.cache.arrays("train"), split.train_rows,
                                             self.data.dataset.label_matrix("train"), self.config.eval.ann)
            result = evaluate_model(self.scoring, self.data.dataset, self.data.cache.arrays(name), name, rows,
                                    self.config.eval, self.config.dataset, split.propensity_rows,
                                    seed=self.config.train.seed, neighbours=neighbours)
        if result is None:
            return None
        metrics, fused = result
        if final:
            self.reporter.predictions(*fused)
        return metrics

    def state_dict(self) -> dict:
        """The loop state a resumed run needs beside the weights (the checkpoint's ``trainer`` part)."""
        return {
            "epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "global_step": self.global_step,
            "loss_sum": self.loss_sum, "loss_count": self.loss_count,
            "plan": None if self.plan is None else {"order": self.plan.order, "offsets": self.plan.offsets},
            **self.planner.state_dict(),
            "reported": self.reported,
        }

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.step_in_epoch = int(state["epoch"]), int(state["step_in_epoch"])
        self.global_step = int(state["global_step"])
        self.loss_sum, self.loss_count = float(state["loss_sum"]), int(state["loss_count"])
        self.plan = BatchPlan(state["plan"]["order"], state["plan"]["offsets"]) if state["plan"] else None
        self.planner.load_state_dict(state)
        self.reported = state.get("reported", {})

    def save_checkpoint(self, metrics: dict) -> None:
        """Write a checkpoint of the current state and report it with ``metrics``."""
        self.reported = metrics
        with self.meter.phase("checkpoint"), tempfile.TemporaryDirectory(prefix="xmc-ckpt-") as tmp:
            self.checkpoints.save(tmp, self.state_dict())
            self.session.report(metrics, Path(tmp),
                                f"checkpoint_epoch{self.epoch:03d}_step{self.global_step:07d}")

    def restore(self, directory: str | Path) -> None:
        """Continue from the checkpoint in ``directory``."""
        self.load_state_dict(self.checkpoints.load(directory))

    def resume(self) -> bool:
        """Restore the session's latest checkpoint, if there is one."""
        with self.session.latest_checkpoint() as directory:
            if directory is None:
                return False
            with self.meter.phase("restore"):
                self.restore(directory)
            return True
