"""The time and peak memory of each phase, as a run's history records them."""

from __future__ import annotations

import time

import numpy as np
import pytest

from xmc.memory import PhaseMeter, _malloc_trim, release_freed_memory, resident_mib


def test_each_phase_reports_its_own_peak_not_the_lifetime_one():
    meter = PhaseMeter()
    if not meter.resettable:
        pytest.skip("this kernel does not let a process reset its peak memory mark")
    release_freed_memory()  # as every phase does at its start
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


def test_a_phase_does_not_carry_what_an_earlier_one_freed_into_the_heap():
    if _malloc_trim() is None:
        pytest.skip("no glibc malloc_trim here")
    meter = PhaseMeter()
    # freeing a 16 MiB block raises glibc's mmap threshold to it, so the 2 MiB blocks after it come from the
    # heap, as an encoder's batch temporaries do; the small block made last pins the heap's top
    first = np.ones(2 << 20)
    del first
    with meter.phase("work"):
        blocks = [np.ones(1 << 18) for _ in range(150)]  # 300 MiB in 2 MiB blocks
        pin = np.ones(1 << 12)
        del blocks
    freed_but_kept = resident_mib()
    with meter.phase("next"):
        pass
    phases = meter.take()
    assert phases["work"]["peak_rss_mib"] - phases["next"]["peak_rss_mib"] > 250, (freed_but_kept, phases)
    del pin
