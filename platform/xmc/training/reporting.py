"""What a run leaves in its directory for people: metrics.json, a JSON-lines history, TensorBoard scalars
and a PNG plot of loss and P@1/PSP@1 per epoch. Written by the rank-0 worker only."""

from __future__ import annotations

import json
from pathlib import Path

from xmc.io import atomic_path, write_json

HISTORY = "history.jsonl"
PREDICTORS = ("fused", "de", "clf")


class RunReporter:
    def __init__(self, run_dir: Path, enabled: bool = True):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self._writer = None

    @property
    def writer(self):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.run_dir / "tensorboard"))
        return self._writer

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self.enabled:
            self.writer.add_scalar(tag, value, step)

    def history(self) -> list[dict]:
        path = self.run_dir / HISTORY
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

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
            write_json(self.run_dir / "metrics.json", {**main, "epoch": record["epoch"], "step": step,
                                                       **{name: m for name, m in evaluation.items()}})
        # keep at most one record per epoch (a resumed epoch replaces what a killed run wrote)
        previous = [r for r in self.history() if r["epoch"] != record["epoch"]]
        with atomic_path(self.run_dir / HISTORY) as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in [*previous, record]), encoding="utf-8")
        self.scalar("train/epoch_loss", record["loss"], step)
        self.writer.flush()
        self.plot()

    def plot(self) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        history = self.history()
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
            axis.legend()
        fig.tight_layout()
        with atomic_path(self.run_dir / "training.png") as tmp:
            fig.savefig(tmp, format="png", dpi=90)
        plt.close(fig)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
