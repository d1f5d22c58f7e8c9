"""jobs/tune.py on a real subset: a 2-trial sweep, killed after its first trial and resumed without
rerunning it; validation-only selection; outputs; the best config retrained and evaluated on test."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from xmc.config import load_config
from xmc.data.prepare import prepare_dataset
from xmc.experiment import ExperimentConfig

from conftest import LOOPBACK_ENV, REPO, write_lf_subset

pytestmark = pytest.mark.integration


def test_sweep_resumes_after_a_kill_and_retrains_the_best(tmp_path, cooking_source, tiny_encoder):
    source = write_lf_subset(cooking_source, tmp_path / "source", 384, 60)
    prepare_dataset(source, tmp_path / "prepared")
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(yaml.safe_dump({"tune": {
        "name": "sweep", "storage": str(tmp_path / "tune"),
        "base": [str(REPO / "configs/datasets/cooking-stackexchange.yaml"),
                 str(REPO / "configs/methods/prime.yaml")],
        "overrides": [f"dataset.prepared={tmp_path / 'prepared'}", f"encoder.model={tiny_encoder}",
                      "dataset.max_len=24", "train.epochs=2",
                      "train.batch_size=32", "train.max_steps_per_epoch=3", "train.num_workers=1",
                      f"run.storage={tmp_path / 'runs'}"],
        "search_space": {"pool.positive_sampling": {"grid": ["uniform", "inverse_propensity"]}},
        "validation_fraction": 0.2, "metric": "P@5", "scheduler": "asha", "grace_period": 1,
    }}))
    command = [sys.executable, str(REPO / "jobs" / "tune.py"), "--config", str(sweep_file)]
    env = {**os.environ, **LOOPBACK_ENV}
    runs = tmp_path / "tune" / "sweep" / "train-runs"

    def finished_trials() -> list[Path]:  # both epochs evaluated and the final checkpoint written
        return [p.parent for p in runs.glob("*/history.jsonl")
                if len(p.read_text().splitlines()) == 2 and list(p.parent.glob("checkpoint_epoch002_*"))]

    first = subprocess.Popen(command, cwd=REPO, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    try:
        while not finished_trials() and time.time() < deadline:
            assert first.poll() is None, "the sweep ended before it could be killed"
            time.sleep(0.5)
        time.sleep(3)  # Tune may or may not have recorded the trial as finished: both must resume right
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    done = finished_trials()
    assert len(done) == 1
    stamp = (done[0] / "history.jsonl").stat().st_mtime_ns

    second = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert '"resumed": true' in second.stdout
    assert (done[0] / "history.jsonl").stat().st_mtime_ns == stamp  # the finished trial was not rerun

    sweep_dir = tmp_path / "tune" / "sweep"
    rows = list(csv.DictReader(open(sweep_dir / "results.csv")))
    assert len(rows) == 2 and {r["pool.positive_sampling"] for r in rows} == {"uniform", "inverse_propensity"}
    assert all(r["P@5"] and not r["error"] for r in rows)
    for trial_dir in runs.iterdir():  # trials were scored on the validation hold-out, never on test
        trial_config = yaml.safe_load((trial_dir / "config.yaml").read_text())
        assert trial_config["eval"]["split"] == "validation"
        assert trial_config["dataset"]["validation_fraction"] == 0.2
    best = load_config(ExperimentConfig, sweep_dir / "best_config.yaml")  # what jobs/train.py --config reads
    assert best.eval.split == "test" and best.dataset.validation_fraction == 0.0
    best_row = max(rows, key=lambda r: float(r["P@5"]))
    assert best.pool.positive_sampling == best_row["pool.positive_sampling"]
    test_metrics = json.loads((sweep_dir / "best_test_metrics.json").read_text())
    assert test_metrics["epoch"] == 2 and 0 < test_metrics["P@5"] <= 100
    assert (sweep_dir / "metric_vs_params.png").read_bytes()[:4] == b"\x89PNG"
