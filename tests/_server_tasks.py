"""Task functions the server tests run in workers (module level, so they pickle by reference)."""

from __future__ import annotations

import time


def square(x: int) -> int:
    return x * x


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def grow_and_nap(mib: int, seconds: float) -> int:
    """Hold ``mib`` MiB of private memory for ``seconds`` (a task with a visible footprint)."""
    block = bytearray(mib * 1024 * 1024)
    time.sleep(seconds)
    return len(block)
