"""What a run leaves in its storage for people: metrics.json, a JSON-lines history, TensorBoard scalars, a
PNG plot of loss and P@1/PSP@1 per epoch, and the final predictions. Written by the rank-0 worker only.

The run's location is a path or a storage URI (:mod:`xmc.storage`). Every file is written whole into it;
TensorBoard, which writes event files as it goes, logs to a local directory (the run's own when the run is
local) that is copied to the run's storage at every epoch end.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from xmc import storage
from xmc.evaluation.predictions import save_predictions

HISTORY = "history.jsonl"
METRICS = "metrics.json"
PREDICTIONS = "predictions.npz"
PLOT = "training.png"
TENSORBOARD = "tensorboard"
PREDICTORS = ("fused", "de", "clf")


class RunReporter:
    def __init__(self, location: str | os.PathLike, enabled: bool = True):
        self.location = storage.resolve(location)
        self.enabled = enabled
        self._writer = None
        self._tensorboard_dir: Path | None = None

    def file(self, name: str) -> str:
        """The location of one of the run's files."""
        return storage.join(self.location, name)

    @property
    def writer(self):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            if storage.is_local(self.location):
                self._tensorboard_dir = storage.local_path(self.location) / TENSORBOARD
            else:
                self._tensorboard_dir = Path(tempfile.mkdtemp(prefix="xmc-tensorboard-"))
            self._writer = SummaryWriter(str(self._tensorboard_dir))
        return self._writer

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self.enabled:
            self.writer.add_scalar(tag, value, step)

    def history(self) -> list[dict]:
        if not storage.is_file(self.file(HISTORY)):
            return []
        lines = storage.read_text(self.file(HISTORY)).splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def epoch_end(self, record: dict, evaluation: dict[str, dict[str, float]] | None, step: int) -> None:
        """Append the epoch's record; with an evaluation, also rewrite metrics.json and the plot."""
        if not self.enabled:
            return
        record = dict(record)
        if evaluation:
            for predictor, metrics in evaluation.items():
                for key, value in metrics.items():
                    record[f"{predictor}/{key}"] = value
                    self.scalar(f"{predictor}/{key}", value, step)
            main = evaluation.get("fused") or evaluation["de"]
            storage.write_json(self.file(METRICS), {**main, "epoch": record["epoch"], "step": step,
                                                    **{name: m for name, m in evaluation.items()}})
        # keep at most one record per epoch (a resumed epoch replaces what a killed run wrote)
        history = [r for r in self.history() if r["epoch"] != record["epoch"]] + [record]
        storage.write_text(self.file(HISTORY), "".join(json.dumps(r) + "\n" for r in history))
        self.scalar("train/epoch_loss", record["loss"], step)
        self.writer.flush()
        if not storage.is_local(self.location):
            storage.upload_dir(self._tensorboard_dir, self.file(TENSORBOARD))
        self.plot(history)

    def amend_epoch(self, epoch: int, update: dict) -> None:
        """Add ``update`` to the history record of ``epoch`` (what is known only after its checkpoint)."""
        if not self.enabled:
            return
        history = [{**record, **update} if record["epoch"] == epoch else record for record in self.history()]
        storage.write_text(self.file(HISTORY), "".join(json.dumps(r) + "\n" for r in history))

    def predictions(self, indices: np.ndarray, scores: np.ndarray) -> None:
        """The final fused predictions of the evaluated split (``predictions.npz``)."""
        if self.enabled:
            save_predictions(self.file(PREDICTIONS), indices, scores)

    def plot(self, history: list[dict]) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        if not history:
            return
        fig, (ax_loss, ax_p1, ax_psp) = plt.subplots(1, 3, figsize=(14, 4))
        epochs = [r["epoch"] for r in history]
        ax_loss.plot(epochs, [r["loss"] for r in history], marker="o")
        ax_loss.set(title="training loss", xlabel="epoch")
        for axis, key in ((ax_p1, "P@1"), (ax_psp, "PSP@1")):
            for predictor in PREDICTORS:
                points = [(r["epoch"], r[f"{predictor}/{key}"]) for r in history if f"{predictor}/{key}" in r]
                if points:
                    axis.plot(*zip(*points), marker="o", label=predictor)
            axis.set(title=f"test {key}", xlabel="epoch")
            if axis.lines:  # nothing evaluated yet: no legend to draw
                axis.legend()
        fig.tight_layout()
        image = io.BytesIO()
        fig.savefig(image, format="png", dpi=90)
        plt.close(fig)
        storage.write_bytes(self.file(PLOT), image.getvalue())

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
