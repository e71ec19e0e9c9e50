"""Task functions for the pool policy tests (recycling, keys, priority, coalescing, imap).

Module level, so every start method pickles them by reference. As in ``_tasks``, tasks that
wait for the test wait on files with a bounded wait, so a broken pool fails a test instead of
hanging it. This module imports nothing heavy (``_tasks`` pulls in psutil, ~60 ms): recycling
tests start a fresh worker every few tasks, and each one imports it anew.
"""

from __future__ import annotations

import os
import time
from typing import Any

from memwise.memory import private_memory

MiB = 1024 * 1024
WAIT = 30.0  # as _tasks.WAIT: far above what a healthy run needs

# What the leaking tasks keep alive for the life of their worker process.
_retained: list[bytes] = []
_calls = 0


def _next_call() -> int:
    global _calls
    _calls += 1
    return _calls


def write_atomic(path: Any, text: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def wait_for(path: Any) -> None:
    deadline = time.monotonic() + WAIT
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {WAIT} s")
        time.sleep(0.005)


def getpid(*_args: Any) -> int:
    return os.getpid()


def keyed(key: Any, seq: int) -> tuple[Any, int, int, int]:
    """``(key, seq, pid, t)``; ``t`` is the system-wide monotonic clock when it ran.

    CLOCK_MONOTONIC is one clock for all processes, so ``t`` orders executions even across a
    worker restart.
    """
    return key, seq, os.getpid(), time.monotonic_ns()


def item_of(item: tuple[Any, int]) -> tuple[Any, int, int, int]:
    """``keyed`` for imap, which passes one argument."""
    return keyed(*item)


def labelled(label: str) -> tuple[str, int]:
    """``(label, n)``: n counts this worker's calls, i.e. the order in which they ran."""
    return label, _next_call()


def block(pid_path: Any, release_path: Any) -> int:
    """Announce this worker's pid in ``pid_path``, wait until ``release_path`` exists; the pid."""
    write_atomic(pid_path, str(os.getpid()))
    wait_for(release_path)
    return os.getpid()


def block_labelled(label: str, pid_path: Any, release_path: Any) -> tuple[str, int]:
    """``labelled``, once ``block`` lets it through."""
    block(pid_path, release_path)
    return labelled(label)


def index(i: int) -> int:
    return i


def leak(nbytes: int) -> tuple[int, int]:
    """Retain ``nbytes`` for good; return ``(pid, private memory)`` measured before returning.

    ``b"x" * n`` writes every byte, so the pages are resident at once (``bytes(n)`` and
    ``bytearray(n)`` may get untouched zero pages from calloc that count for nothing).
    """
    _retained.append(b"x" * nbytes)
    return os.getpid(), private_memory()


def balloon(step: int, ceiling: int) -> int:
    """Grow by ``step`` bytes every 10 ms up to ``ceiling`` bytes, then wait out ``WAIT``.

    Stands for a runaway task: the pool must kill it long before it ends on its own.
    """
    held = []
    while sum(len(b) for b in held) < ceiling:
        held.append(b"x" * step)
        time.sleep(0.01)
    time.sleep(WAIT)
    return os.getpid()


def touch_item(directory: Any, i: int) -> int:
    """Leave a file named ``i`` in ``directory`` (so the test sees it ran); return ``i``."""
    write_atomic(os.path.join(directory, str(i)), str(os.getpid()))
    return i


def first_waits(paths: list[Any], directory: Any, i: int) -> int:
    """``touch_item``, except that item 0 first waits until every file in ``paths`` exists."""
    if i == 0:
        for path in paths:
            wait_for(path)
    return touch_item(directory, i)


def fail_item(bad: int, directory: Any, i: int) -> int:
    """``touch_item``, raising ``ValueError`` for item ``bad``."""
    touch_item(directory, i)
    if i == bad:
        raise ValueError(f"item {i} is bad")
    return i


def first_slow_others_wait(release: Any, directory: Any, i: int) -> int:
    """``touch_item``: item 0 after 50 ms (long enough that nothing is pipelined), the others
    once ``release`` exists."""
    if i == 0:
        time.sleep(0.05)
    else:
        wait_for(release)
    return touch_item(directory, i)
