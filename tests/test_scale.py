"""benchmarks/scale.py at a small setting: two Ray Train workers on synthetic data at two label counts, and
each training phase's label state per worker within its ideal (a regression to gathering every label's
vectors on every worker doubles it at two workers, and fails here).

Chunks of 4 MiB (``XMC_CHUNK_BYTES``) keep what is made at once far smaller than a worker's labels, so the
growth between the two label counts is the label state itself, as it is at a million labels with the default
chunks. Encoder batches of 64 texts do the same for the encoder's temporaries: at the default 256 they are
as large as the classifier rows the initialisation sets here, and the run-to-run spread of their peak alone
could use up the tolerance of that phase.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import LOOPBACK_ENV, REPO

pytestmark = pytest.mark.integration

#: Allowed measured/ideal label state per phase: the benchmark's target of 1.2, with room for the noise of a
#: peak at a hundred thousand labels; one gathered copy of every label's vector would add 1536 bytes a label,
#: a ratio of at least 1.33 in the phase that holds the most (evaluation), and the other half of the table,
#: 1.9, in the initialisation.
TOLERANCE = 1.25


def test_two_workers_hold_half_of_the_label_state_in_every_training_phase(tmp_path):
    env = {**os.environ, **LOOPBACK_ENV, "XMC_CHUNK_BYTES": str(4 << 20)}
    command = [sys.executable, str(REPO / "benchmarks" / "scale.py"), "--labels", "100000",
               "--baseline-labels", "10000", "--queries", "1000", "--workers", "2", "--steps", "1",
               "--shards", "2", "--serve-queries", "0", "--skip-resume", "--skip-export",
               "--set", "encoder.batch_size=64",
               "--work", str(tmp_path), "--out", str(tmp_path / "report.json")]
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    phases = report["label_state"]["2"]
    assert {"initialise", "steps", "mining", "evaluation", "checkpoint"} <= phases.keys()
    for name, phase in phases.items():
        assert phase["ratio"] <= TOLERANCE, (name, phase)
    # and the labels did cost memory: the measurement is not of nothing
    assert phases["evaluation"]["measured_mib"] > 100
    for run in report["runs"]:
        assert len(run["phases"]["steps"]["peak_rss_mib"]) == 2  # both workers reported
