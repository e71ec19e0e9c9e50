"""Actor classes and task functions for the actor, session and budget tests.

Module level, so every start method pickles them by reference. As in ``_tasks``, whatever
waits for the test waits on files with a bounded wait: a file works across any process
boundary and survives a SIGKILL, and the bound makes a broken actor fail a test instead of
hanging it. Nothing heavy is imported: every actor process imports this module anew.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

WAIT = 30.0  # as _tasks.WAIT: far above what a healthy run needs


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def wait_for(path: Path) -> None:
    deadline = time.monotonic() + WAIT
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {WAIT} s")
        time.sleep(0.005)


def append_line(path: Path, text: str) -> None:
    # One short O_APPEND write: lines from several processes never interleave.
    with open(path, "a") as f:
        f.write(f"{text}\n")


def read_lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


# --------------------------------------------------------------------------------------------
# Actors
# --------------------------------------------------------------------------------------------


class Counter:
    """A stateful object: the state tells whether its constructor ran again (after a crash).

    ``init_log``, if given, gets one line (the pid) per constructor run.
    """

    def __init__(self, start: int = 0, init_log: Path | None = None) -> None:
        self.total = start
        if init_log is not None:
            append_line(init_log, str(os.getpid()))

    def add(self, n: int) -> int:
        self.total += n
        return self.total

    def get(self) -> int:
        return self.total

    def where(self) -> tuple[int, str]:
        """The process and thread this object runs in."""
        return os.getpid(), threading.current_thread().name

    def scale(self, array: Any, factor: float) -> Any:
        return array * factor

    def fail(self, message: str) -> None:
        raise ValueError(message)

    def die(self) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def hold(self, directory: Path, release: Path) -> tuple[int, int]:
        """Leave ``<pid>.started`` in ``directory``, wait for ``release``; ``(pid, total)``."""
        write_atomic(directory / f"{os.getpid()}.started", str(os.getpid()))
        wait_for(release)
        return os.getpid(), self.total

    def render(self, n: int, log: Path, started: Path | None, release: Path | None) -> int:
        """A preview: logs ``n``; the first one signals ``started`` and waits for ``release``."""
        append_line(log, str(n))
        if started is not None and release is not None:
            write_atomic(started, str(os.getpid()))
            wait_for(release)
        return n


class BrokenInit:
    """An object whose constructor always fails."""

    def __init__(self, message: str) -> None:
        raise RuntimeError(message)

    def get(self) -> int:  # pragma: no cover - never reached
        return 0


class ExitsInConstructor:
    """An object whose constructor ends its process, as a crash in native loading code does."""

    def __init__(self, code: int) -> None:
        os._exit(code)

    def get(self) -> int:  # pragma: no cover - never reached
        return 0


# --------------------------------------------------------------------------------------------
# Budgeted pool tasks
# --------------------------------------------------------------------------------------------


def exclusive(directory: Path, name: str, hold: float) -> list[str]:
    """Run alone: leave ``<name>.running`` while running; return the others' markers seen.

    A non-empty result means another such task was running at the same time. ``hold`` keeps
    the task running long enough that an overlap, if the budget allowed one, is seen.
    """
    marker = directory / f"{name}.running"
    marker.touch()
    try:
        seen = {p.name for p in directory.glob("*.running")} - {marker.name}
        time.sleep(hold)
        seen |= {p.name for p in directory.glob("*.running")} - {marker.name}
    finally:
        marker.unlink()
    return sorted(seen)


def meet(directory: Path, count: int) -> int:
    """Complete only once ``count`` of these tasks run at the same time."""
    write_atomic(directory / f"{os.getpid()}.meet", "")
    deadline = time.monotonic() + WAIT
    while len(list(directory.glob("*.meet"))) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"fewer than {count} tasks ran at the same time")
        time.sleep(0.005)
    return os.getpid()


def block(started: Path, release: Path) -> int:
    """Signal ``started``, then wait for ``release``."""
    write_atomic(started, str(os.getpid()))
    wait_for(release)
    return os.getpid()


def square(x: int) -> int:
    return x * x


def churn(n: int) -> int:
    """Allocate and free many medium objects, the pattern ``trim`` gives back to the OS."""
    blocks = [bytes(64 * 1024) for _ in range(n)]
    return sum(len(b) for b in blocks)


def raise_value_error(message: str) -> None:
    raise ValueError(message)


def sigkill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def echo(value: Any) -> Any:
    return value


def allocate_and_free(nbytes: int) -> int:
    """Touch ``nbytes`` of fresh memory, free it, and return how much was touched."""
    block = bytearray(nbytes)
    block[::4096] = b"\x01" * len(range(0, nbytes, 4096))
    del block
    return nbytes


class Holds:
    """An object built from whatever it is given (to test arguments that cannot travel)."""

    def __init__(self, thing: Any) -> None:
        self.thing = thing

    def kind(self) -> str:
        return type(self.thing).__name__
