"""Per-process figures for snapshots (private memory, PSS, CPU %), cached for a short while.

A dashboard, a metrics scrape and ``memwise top`` may all ask for a snapshot at once; reading
``/proc`` for every worker on every call would multiply with the number of callers (PSS makes
the kernel walk page tables: ~0.2 ms per small process, more for a large one). Figures are
therefore measured at most once per ``interval`` per process, whoever asks.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

from memwise.budget import MemoryBudget
from memwise.memory import usage

CACHE_SECONDS = 0.25
_LINUX = sys.platform.startswith("linux")
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True, slots=True)
class Figures:
    """One process's figures at one moment; None where unknown (exited, not permitted)."""

    private: int | None
    pss: int | None
    cpu_percent: float | None


_UNKNOWN = Figures(None, None, None)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far, in seconds.

    Raises:
        ProcessLookupError: the process does not exist.
    """
    if not _LINUX:
        import psutil

        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.NoSuchProcess:
            raise ProcessLookupError(f"no process with pid {pid}") from None
        return float(times.user + times.system)
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            text = stat.read()
    except FileNotFoundError:
        raise ProcessLookupError(f"no process with pid {pid}") from None
    # The command name (field 2) may hold spaces and parentheses: count from its closing one.
    fields = text[text.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


class ProcessProbe:
    """Cached :class:`Figures` per pid; thread-safe; one per pool."""

    def __init__(self, interval: float = CACHE_SECONDS) -> None:
        self.interval = interval
        self._lock = threading.Lock()
        # pid -> (monotonic time of the measurement, figures, cpu seconds at that time)
        self._cache: dict[int, tuple[float, Figures, float | None]] = {}
        self._budget: tuple[float, int] | None = None  # (measured at, bytes)

    def figures(self, pids: Iterable[int]) -> dict[int, Figures]:
        """Figures of each of ``pids``, measured now unless measured within ``interval``.

        CPU % is over the time since the previous measurement of that process (the first
        measurement gives None). Processes that are no longer asked about are forgotten.
        """
        wanted = set(pids)
        now = time.monotonic()
        with self._lock:
            for pid in self._cache.keys() - wanted:
                del self._cache[pid]
            result = {}
            for pid in wanted:
                cached = self._cache.get(pid)
                if cached is not None and now - cached[0] < self.interval:
                    result[pid] = cached[1]
                    continue
                figures, cpu = self._measure(pid, now, cached)
                self._cache[pid] = (now, figures, cpu)
                result[pid] = figures
            return result

    def budget_in_use(self, budget: MemoryBudget) -> int:
        """``budget.in_use()``, measured at most once per ``interval``."""
        now = time.monotonic()
        with self._lock:
            if self._budget is None or now - self._budget[0] >= self.interval:
                self._budget = (now, budget.in_use())
            return self._budget[1]

    @staticmethod
    def _measure(
        pid: int, now: float, previous: tuple[float, Figures, float | None] | None
    ) -> tuple[Figures, float | None]:
        try:
            measured = usage(pid, pss=True)
            cpu: float | None = cpu_seconds(pid)
        except (ProcessLookupError, PermissionError):
            return _UNKNOWN, None
        percent = None
        if previous is not None and previous[2] is not None and cpu is not None:
            elapsed = now - previous[0]
            if elapsed > 0:
                percent = max(0.0, (cpu - previous[2]) / elapsed * 100.0)
        return Figures(measured.private, measured.pss, percent), cpu
