"""benchmarks/scale.py at a small setting: two Ray Train workers on synthetic data at two label counts, and
each training phase's label state per worker within its ideal (a regression to gathering every label's
vectors on every worker doubles it at two workers, and fails here).

Chunks of 4 MiB (``XMC_CHUNK_BYTES``) keep what is made at once far smaller than a worker's labels, so the
growth between the two label counts is the label state itself, as it is at a million labels with the default
chunks. The label counts are large enough that a label-sized copy stands out of the noise of the encoder's
batch temporaries, whose peak varies by tens of MiB from one run to the next.
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
#: a ratio of at least 1.33 in the phase that holds the most (evaluation).
TOLERANCE = 1.25
#: ...and at least this much above the ideal, in MiB: the run-to-run spread of a phase's peak. It matters only
#: for the initialisation, whose ideal (one row a label held) is small enough here that the spread alone has
#: gone past TOLERANCE (benchmarks/results/scale_synthetic-1.3M_cpu2_2026-12-07.md); a table gathered whole
#: would still exceed it (the other half of the table, 73 MiB, at two workers).
NOISE_MIB = 40


def test_two_workers_hold_half_of_the_label_state_in_every_training_phase(tmp_path):
    env = {**os.environ, **LOOPBACK_ENV, "XMC_CHUNK_BYTES": str(4 << 20)}
    command = [sys.executable, str(REPO / "benchmarks" / "scale.py"), "--labels", "100000",
               "--baseline-labels", "10000", "--queries", "1000", "--workers", "2", "--steps", "1",
               "--shards", "2", "--serve-queries", "0", "--skip-resume", "--skip-export",
               "--work", str(tmp_path), "--out", str(tmp_path / "report.json")]
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    phases = report["label_state"]["2"]
    assert {"initialise", "steps", "mining", "evaluation", "checkpoint"} <= phases.keys()
    for name, phase in phases.items():
        allowed = max((TOLERANCE - 1) * phase["ideal_mib"], NOISE_MIB)
        assert phase["measured_mib"] - phase["ideal_mib"] <= allowed, (name, phase)
    # and the labels did cost memory: the measurement is not of nothing
    assert phases["evaluation"]["measured_mib"] > 100
    for run in report["runs"]:
        assert len(run["phases"]["steps"]["peak_rss_mib"]) == 2  # both workers reported
