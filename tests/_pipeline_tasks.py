"""Stage functions the pipeline tests run in worker processes (module level: picklable)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any


def in_shared_memory(frame: Any) -> tuple[bool, int]:
    """Whether ``frame``'s bytes are mapped from a memwise segment here, and the frame's sum.

    True means the frame arrived as a handle to the parent's shared memory, not as a copy.
    """
    address = int(frame.__array_interface__["data"][0])
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split()
        start, end = (int(x, 16) for x in fields[0].split("-"))
        if start <= address < end:
            return fields[-1].startswith("/dev/shm/mw_"), int(frame.sum())
    return False, int(frame.sum())


def crash_once(marker: str, x: int) -> int:
    """Kill this worker the first time item 3 arrives; square ``x`` otherwise."""
    if x == 3 and not os.path.exists(marker):
        Path(marker).write_text("crashed")
        os.kill(os.getpid(), signal.SIGKILL)
    return x * x


def slowly(x: int) -> int:
    time.sleep(0.05)
    return x


def fail_on(bad: int, x: int) -> int:
    if x == bad:
        raise KeyError(f"item {x} is bad")
    return x


def square(x: int) -> int:
    return x * x
