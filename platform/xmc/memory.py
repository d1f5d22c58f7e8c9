"""Peak resident memory of this process, phase by phase.

A run near the edge of a machine's memory needs to know which phase needs the most (the training steps, a
mining refresh, an evaluation, a checkpoint, an export shard), not only the lifetime peak. Linux keeps one
high-water mark per process (``VmHWM``), and writing ``5`` to ``/proc/self/clear_refs`` resets it to the
current resident size, so a phase's peak is the mark read at its end after a reset at its start. Where that
is not possible (not Linux, or a kernel that refuses), every phase reports the lifetime peak so far, which is
an upper bound.

Memory a phase frees is not always handed back: glibc keeps freed blocks in its heap for reuse (its mmap
threshold grows with the largest block freed, so large temporaries land in the heap too). Resident memory
then carries what earlier phases freed, and a phase's peak would include it; so each phase starts by handing
freed memory back to the operating system (``malloc_trim``), which also leaves it to the other processes of
the node.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import resource
import time
from collections.abc import Iterator
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def release_freed_memory() -> None:
    """Hand memory the C library holds freed back to the operating system (a no-op where it cannot)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def resident_mib() -> float:
    """This process's resident memory now, in MiB (the lifetime peak where it cannot be read)."""
    kib = _status_kib("VmRSS")
    return (kib if kib is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024


class PhaseMeter:
    """Wall time and peak resident memory (MiB) of this process per phase, and its peak over all of them.

    ``with meter.phase("mining"): ...`` adds the phase's seconds to ``meter.phases["mining"]`` and keeps the
    largest peak of its runs, until :meth:`take` hands the record over and starts a new one;
    :attr:`lifetime_mib` is the peak since the meter was made, which the resets would otherwise hide.
    """

    def __init__(self) -> None:
        self.phases: dict[str, dict[str, float]] = {}
        self.resettable = self._reset()
        self.lifetime_mib = self._mark()

    @staticmethod
    def _reset() -> bool:
        try:
            _CLEAR_REFS.write_text("5")
            return True
        except OSError:
            return False

    @staticmethod
    def _mark() -> float:
        kib = _status_kib("VmHWM")
        return (kib if kib is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self.lifetime_mib = max(self.lifetime_mib, self._mark())
        release_freed_memory()
        if self.resettable:
            self._reset()
        started = time.perf_counter()
        try:
            yield
        finally:
            peak = self._mark()
            self.lifetime_mib = max(self.lifetime_mib, peak)
            record = self.phases.setdefault(name, {"seconds": 0.0, "peak_rss_mib": 0.0})
            record["seconds"] += time.perf_counter() - started
            record["peak_rss_mib"] = max(record["peak_rss_mib"], peak)

    def take(self) -> dict[str, dict[str, float]]:
        """The phases recorded since the last call (then forgotten)."""
        self.lifetime_mib = max(self.lifetime_mib, self._mark())
        phases, self.phases = self.phases, {}
        return phases
