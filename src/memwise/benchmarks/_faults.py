"""Faults to inject into a pool: the building blocks of ``memwise bench chaos`` and tests/chaos.

A fault has a *kind* (how the process fails) and a *point* (where on a task's way it fails).
Objects whose ``__reduce__`` misbehaves put a fault at a pickling or unpickling step; task
functions put it in the run itself. Everything here lives at module level so that any start
method can import it in a worker.

=================  ==========================================================================
kind               what happens
=================  ==========================================================================
``exception``      a ``ValueError`` is raised
``exit``           ``sys.exit(3)`` (``SystemExit``, a ``BaseException``)
``os_exit``        ``os._exit(3)``: the process ends at once, no clean-up
``segfault``       the process dereferences NULL (SIGSEGV)
``sigkill``        the process sends itself SIGKILL
=================  ==========================================================================

Points, in a task's order: ``pickle_call`` (parent, submit), ``unpickle_call`` (worker),
``run`` (worker), ``pickle_result`` (worker), ``unpickle_result`` (parent). Faults that end the
process are only injected in workers: in the parent they would end the caller itself.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from typing import Any

KINDS = ("exception", "exit", "os_exit", "segfault", "sigkill")
# Only these can be injected where the parent does the work.
PARENT_KINDS = ("exception", "exit")
WORKER_POINTS = ("unpickle_call", "run", "pickle_result")
PARENT_POINTS = ("pickle_call", "unpickle_result")


class InjectedFault(ValueError):
    """The exception an ``exception`` fault raises."""


def fail(kind: str) -> None:
    """Make this process fail the way ``kind`` says (see the module docstring)."""
    if kind == "exception":
        raise InjectedFault(f"injected fault in pid {os.getpid()}")
    if kind == "exit":
        sys.exit(3)
    if kind == "os_exit":
        os._exit(3)
    if kind == "segfault":
        ctypes.string_at(0)
    if kind == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise ValueError(f"unknown fault kind {kind!r}; choose one of {KINDS}")


def _fail_on_load(kind: str) -> None:
    fail(kind)


class FailOnPickle:
    """Fails whoever pickles it."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __reduce__(self) -> tuple[Any, ...]:
        fail(self.kind)
        raise AssertionError("unreachable")


class FailOnUnpickle:
    """Pickles fine; fails whoever unpickles it."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __reduce__(self) -> tuple[Any, ...]:
        return (_fail_on_load, (self.kind,))


def identity(value: Any) -> Any:
    return value


def run_fault(kind: str) -> None:
    fail(kind)


def return_failing(kind: str, on: str, payload: Any = None) -> Any:
    """A result that fails when pickled (``on="pickle"``) or unpickled (``on="unpickle"``).

    ``payload`` (for example a large array) is pickled before the fault: a result slot has
    already been filled when it strikes.
    """
    bomb = FailOnPickle(kind) if on == "pickle" else FailOnUnpickle(kind)
    return (payload, bomb)


def touch_then_fail(array: Any, kind: str) -> None:
    """Read a (lent) shared-memory argument, then fail while holding it."""
    float(array.sum())
    fail(kind)


def square(x: int) -> int:
    return x * x


def checksum(i: int, array: Any) -> float:
    """The right result of ``checked(i)`` / ``checked_array(array, i)``."""
    return float(i * i) if array is None else float(i) + float(array[-1])


def checked(i: int, work_s: float) -> float:
    """A small task with a checkable result that takes about ``work_s`` seconds."""
    import time

    deadline = time.perf_counter() + work_s
    while time.perf_counter() < deadline:
        pass
    return float(i * i)


def checked_array(array: Any, i: int, work_s: float) -> float:
    """A task on a large (shared-memory) argument with a checkable result."""
    checked(i, work_s)
    return float(i) + float(array[-1])


def hang() -> None:
    """Never returns (until its worker is killed for overrunning)."""
    import time

    while True:
        time.sleep(1)


class CodedError(Exception):
    """An exception whose constructor needs two arguments, rebuilt by a custom ``__reduce__``."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.code, self.detail))


class UnrebuildableError(Exception):
    """An exception that pickles but cannot be rebuilt (its ``__reduce__`` lies)."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(code)
        self.detail = detail


def raise_error(error: BaseException) -> None:
    raise error


def make_unpicklable(payload: Any) -> Any:
    """A result that cannot be pickled: ``payload`` next to a lock."""
    import threading

    return [payload, {"lock": threading.Lock()}]


def raise_unrebuildable(code: int, detail: str) -> None:
    raise UnrebuildableError(code, detail)


def record_interval(folder: str, i: int, seconds: float) -> None:
    """Sleep ``seconds`` and write when this task ran, for checks of admission control."""
    import time

    start = time.time()
    time.sleep(seconds)
    with open(f"{folder}/{i}.interval", "w") as f:
        f.write(f"{start} {time.time()}")


class Squarer:
    """An actor's object for storms: squares numbers, slowly enough to be killed mid-call."""

    def work(self, i: int, work_s: float) -> tuple[int, float]:
        """``(pid, i * i)``: the pid tells the storm this process is up and answering."""
        return os.getpid(), checked(i, work_s)


def double_slowly(i: int) -> int:
    checked(i, 0.003)
    return 2 * i


def plus_one(i: int) -> int:
    return i + 1
