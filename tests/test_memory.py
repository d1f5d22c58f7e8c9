"""The time and peak memory of each phase, as a run's history records them."""

from __future__ import annotations

import time

import numpy as np
import pytest

from xmc.memory import PhaseMeter, resident_mib


def test_each_phase_reports_its_own_peak_not_the_lifetime_one():
    meter = PhaseMeter()
    if not meter.resettable:
        pytest.skip("this kernel does not let a process reset its peak memory mark")
    base = resident_mib()
    with meter.phase("big"):
        block = np.ones(400 << 17)  # 400 MiB of float64, touched
        del block
    with meter.phase("small"):
        time.sleep(0.01)
    with meter.phase("small"):  # a second run of a phase adds its time, keeps the larger peak
        time.sleep(0.01)
    phases = meter.take()
    assert phases["big"]["peak_rss_mib"] >= base + 390
    assert phases["small"]["peak_rss_mib"] < phases["big"]["peak_rss_mib"] - 300  # the big block is gone
    assert phases["small"]["seconds"] >= 0.02
    assert meter.lifetime_mib >= phases["big"]["peak_rss_mib"]  # kept across the resets
    assert meter.take() == {}  # handed over once

