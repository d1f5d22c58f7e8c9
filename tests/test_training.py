"""The main job on a real subset of cooking-stackexchange: quality, run outputs, 1 vs 2 workers, resume
after a kill, and a crashed worker retried by FailureConfig."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from xmc.config import from_dict, load_config
from xmc.data.dataset import PreparedDataset
from xmc.data.prepare import prepare_dataset
from xmc.experiment import ExperimentConfig

from conftest import LOOPBACK_ENV, REPO, run_job, write_lf_subset

pytestmark = pytest.mark.integration

N_TRAIN, N_TEST = 768, 300


@pytest.fixture(scope="module")
def subset(tmp_path_factory, cooking_source) -> Path:
    root = tmp_path_factory.mktemp("cooking-subset")
    source = write_lf_subset(cooking_source, root / "source", N_TRAIN, N_TEST)
    prepare_dataset(source, root / "prepared")
    return root


def overrides(subset: Path, storage: Path, name: str, **extra) -> list[str]:
    values = {
        "dataset.source": str(subset / "source"), "dataset.prepared": str(subset / "prepared"),
        "dataset.max_len": 32, "train.epochs": 2, "train.batch_size": 64, "train.progress": False,
        "train.checkpoint_every_steps": 4, "mining.shortlist_size": 16, "run.storage": str(storage),
        "run.name": name, **extra,
    }
    return [f"{k}={v}" for k, v in values.items()]


def load(subset, storage, name, **extra) -> ExperimentConfig:
    return load_config(ExperimentConfig, REPO / "configs" / "demo.yaml",
                       overrides(subset, storage, name, **extra))


def metrics_of(run_dir: str | Path) -> dict:
    return json.loads((Path(run_dir) / "metrics.json").read_text())


@pytest.fixture(scope="module")
def compared(tiny_encoder) -> dict:
    """Settings of the runs compared with each other: no dropout (then 1 and 2 workers differ only in float
    summation order, and a resumed run must reproduce the uninterrupted one) and the one-layer encoder (what
    they compare is the loop's plumbing, which the real encoder's cost only slows down)."""
    return {"model.dropout": 0.0, "encoder.model": str(tiny_encoder)}


@pytest.fixture(scope="module")
def reference_run(subset, tmp_path_factory, ray_session, compared) -> Path:
    """One Ray Train worker, uninterrupted: the run the others are compared with."""
    from xmc.training.driver import run_training

    storage = tmp_path_factory.mktemp("runs")
    _, run_dir = run_training(load(subset, storage, "reference", **compared, **{"train.num_workers": 1}))
    return Path(run_dir)


def test_local_mode_training_beats_zero_shot_and_writes_the_run(subset, tmp_path, monkeypatch):
    from xmc.scoring.model import ScoringModel
    from xmc.training.driver import run_training

    label_encodings = []  # labels encoded, at each encoding of label texts (a collective or a worker's own)
    encode, encode_own = ScoringModel.encode, ScoringModel._encode_own

    def counting_encode(self, embed, tokens, rows=None):
        if tokens is self.label_tokens:
            label_encodings.append(len(tokens[1]) if rows is None else len(rows))
        return encode(self, embed, tokens, rows)

    def counting_encode_own(self, embed, tokens, rows):
        if tokens is self.label_tokens:
            label_encodings.append(len(rows))
        return encode_own(self, embed, tokens, rows)

    monkeypatch.setattr(ScoringModel, "encode", counting_encode)
    monkeypatch.setattr(ScoringModel, "_encode_own", counting_encode_own)

    zero_shot = tmp_path / "zero-shot"
    run_job("evaluate.py", "--data", str(subset / "prepared"), "--encoder", "default",
            "--out", str(zero_shot), "--set", "dataset.max_len=32", "--quiet")
    baseline = metrics_of(zero_shot)

    result, run_dir = run_training(load(subset, tmp_path, "local", **{"train.num_workers": 0}))
    run_dir = Path(run_dir)
    metrics = metrics_of(run_dir)
    assert metrics["epoch"] == 2
    for predictor in ("de", "clf", "fused"):
        assert set(baseline) <= set(metrics[predictor])
    # joint training on 768 real queries clearly beats the pre-trained encoder on held-out test points
    assert metrics["P@1"] > baseline["P@1"] + 5, (metrics["P@1"], baseline["P@1"])
    assert metrics["P@5"] > baseline["P@5"]
    assert metrics["P@1"] == metrics["fused"]["P@1"]
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2]
    assert all(np.isfinite(h["loss"]) for h in history)
    assert (run_dir / "training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    with np.load(run_dir / "predictions.npz") as pred:
        assert pred["indices"].shape == (N_TEST, 100)
    resolved = from_dict(ExperimentConfig, yaml.safe_load((run_dir / "config.yaml").read_text()))
    assert resolved.run.name == "local" and Path(resolved.dataset.prepared).is_absolute()
    assert result.metrics["P@1"] == pytest.approx(metrics["P@1"])
    # Ray Train keeps no local-mode checkpoint: the run's own are in its directory, the latest two
    checkpoints = sorted(p.name for p in run_dir.glob("checkpoint_*"))
    assert len(checkpoints) == 2 and checkpoints[-1].startswith("checkpoint_epoch002_")
    # epoch 1's evaluation and epoch 2's mining share one encoding of the labels; the final evaluation,
    # after epoch 2's steps, encodes them again (a stale reuse would leave one encoding, no reuse three)
    num_labels = PreparedDataset(subset / "prepared").num_labels
    assert label_encodings == [num_labels, num_labels]


def test_rerunning_a_finished_run_trains_nothing_and_reports_its_final_metrics(subset, tmp_path, compared,
                                                                               reference_run):
    """What a Tune trial killed after its last checkpoint, but before Tune recorded it, goes through: Tune
    hears only what the loop reports during the rerun (as TuneReportCallback does), so the loop must say its
    final metrics again."""
    from ray.train import UserCallback

    from xmc.training.driver import build_trainer, resolve_run

    heard = tmp_path / "reports.jsonl"

    class WriteReports(UserCallback):  # local, so Ray ships it by value to the Train controller
        def after_report(self, run_context, metrics, checkpoint):
            with open(heard, "a") as handle:
                handle.write(json.dumps(metrics[0]) + "\n")

    history = reference_run / "history.jsonl"
    stamp, checkpoints = history.stat().st_mtime_ns, sorted(reference_run.glob("checkpoint_epoch*"))
    config, run_dir = resolve_run(load(subset, reference_run.parent, "reference", **compared,
                                       **{"train.num_workers": 1}), "run")
    assert Path(run_dir) == reference_run
    build_trainer(config, run_dir, callbacks=[WriteReports()]).fit()
    assert (history.stat().st_mtime_ns == stamp
            and sorted(reference_run.glob("checkpoint_epoch*")) == checkpoints)
    reports = [json.loads(line) for line in heard.read_text().splitlines()]
    final = metrics_of(reference_run)
    assert len(reports) == 1 and reports[0]["epoch"] == 2
    assert (reports[0]["P@1"] == pytest.approx(final["P@1"])
            and reports[0]["P@5"] == pytest.approx(final["P@5"]))


def test_two_workers_reach_the_quality_of_one(subset, tmp_path, reference_run, compared):
    from xmc.training.driver import run_training

    _, run_dir = run_training(load(subset, tmp_path, "two", **compared, **{"train.num_workers": 2}))
    run_dir = Path(run_dir)
    one, two = metrics_of(reference_run), metrics_of(run_dir)
    history_one = [json.loads(x) for x in (reference_run / "history.jsonl").read_text().splitlines()]
    history_two = [json.loads(x) for x in (run_dir / "history.jsonl").read_text().splitlines()]
    # Same global batches, pools and (averaged) gradients: only the order of float summations differs, which
    # Adam's normalised updates amplify on near-zero gradient coordinates; exact gradient equality of the
    # collectives is tested in test_distributed_equivalence.py.
    for key in ("P@1", "P@5", "PSP@5"):
        assert two[key] == pytest.approx(one[key], abs=1.5), key
    for a, b in zip(history_one, history_two):
        assert b["loss"] == pytest.approx(a["loss"], rel=0.03)
        # each worker's peak memory, rank by rank (a torch process with an encoder is well over 100 MiB)
        assert len(a["peak_rss_mib"]) == 1 and len(b["peak_rss_mib"]) == 2 and min(b["peak_rss_mib"]) > 100
    checkpoints = sorted(run_dir.glob("checkpoint_epoch*"))
    assert checkpoints and {p.name for p in checkpoints[-1].glob("table-rank*.json")} == \
        {"table-rank0000.json", "table-rank0001.json"}  # the classifier table is saved as 2 shards


def test_crashed_worker_is_retried_from_the_last_checkpoint(subset, tmp_path, reference_run, compared,
                                                            monkeypatch):
    from xmc.training.driver import run_training

    marker = tmp_path / "crashed"
    monkeypatch.setenv("XMC_TEST_FAIL_AT_STEP", "6")
    monkeypatch.setenv("XMC_TEST_FAIL_MARKER", str(marker))
    import ray

    ray.shutdown()  # restart Ray so its workers inherit the fault-injection variables
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {
        "GLOO_SOCKET_IFNAME": "lo", "RAY_TRAIN_ENABLE_PRINT_PATCH": "0", **LOOPBACK_ENV,
        "XMC_TEST_FAIL_AT_STEP": "6", "XMC_TEST_FAIL_MARKER": str(marker)}}, _node_ip_address="127.0.0.1")
    _, run_dir = run_training(load(subset, tmp_path, "retried", **compared, **{"train.num_workers": 1,
                                                                                    "train.max_failures": 1}))
    assert marker.read_text().startswith("failed at step 6")
    # resumed from the step-4 checkpoint with the same RNG, batches and pools: the same model comes out
    assert metrics_of(run_dir) == metrics_of(reference_run)


def test_killed_run_resumes_with_the_same_command(subset, tmp_path, reference_run, compared):
    """SIGKILL the whole job mid-epoch after its first step checkpoint, then rerun the same command."""
    command = [sys.executable, str(REPO / "jobs" / "train.py"),
               "--config", str(REPO / "configs" / "demo.yaml")]
    for item in overrides(subset, tmp_path, "killed", **compared, **{"train.num_workers": 1}):
        command += ["--set", item]
    env = {**os.environ, **LOOPBACK_ENV}
    stopped = tmp_path / "stopped"  # the worker stops after step 5, one after the step-4 checkpoint
    first = subprocess.Popen(command, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL,
                             env={**env, "XMC_TEST_HANG_AT_STEP": "5", "XMC_TEST_FAIL_MARKER": str(stopped)})
    run_dir = tmp_path / "killed"
    deadline = time.time() + 600
    try:
        while not stopped.exists() and time.time() < deadline:
            assert first.poll() is None, "the first run ended before it could be killed"
            time.sleep(0.5)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert stopped.read_text().startswith("stopped at step 5")
    assert not (run_dir / "metrics.json").exists(), "killed before the first epoch ended"

    second = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "resumed from checkpoint at epoch 0 step 4" in second.stdout + second.stderr
    history = [json.loads(x) for x in (run_dir / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2]
    assert metrics_of(run_dir) == metrics_of(reference_run)
