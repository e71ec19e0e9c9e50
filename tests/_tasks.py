"""Task functions and helpers for the WorkerPool tests.

Everything a worker runs lives here, at module level, so that every start method (forkserver,
spawn) can pickle it by reference. Tasks that must wait for the test do so on files, never on
multiprocessing objects: a file works across any process boundary and survives a SIGKILL.
Every wait is bounded by ``WAIT`` so that a broken pool fails a test instead of hanging it.
"""

from __future__ import annotations

import ctypes
import importlib
import os
import signal
import sys
import threading
import time
from typing import Any

import psutil

# Upper bound for any wait in the tests; far above what a healthy run ever needs.
WAIT = 30.0


# --------------------------------------------------------------------------------------------
# Files as cross-process signals
# --------------------------------------------------------------------------------------------


def write_atomic(path: Any, text: str) -> None:
    """Create ``path`` with ``text`` so that a reader never sees it half written."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def wait_for(path: Any, timeout: float = WAIT) -> None:
    """Wait until ``path`` exists; raise ``TimeoutError`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout} s")
        time.sleep(0.005)


def read_pid(path: Any, timeout: float = WAIT) -> int:
    """The pid a task wrote to ``path`` (waiting for it to be written)."""
    wait_for(path, timeout)
    with open(path) as f:
        return int(f.read())


def is_gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (never existed, reaped, or a zombie)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_until(predicate: Any, timeout: float = WAIT) -> bool:
    """Poll ``predicate()`` until it is true; return its last value."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def wait_gone(pids: Any, timeout: float = WAIT) -> set[int]:
    """Wait until every pid in ``pids`` is gone; return those still running at the deadline."""
    deadline = time.monotonic() + timeout
    alive = set(pids)
    while alive:
        alive = {pid for pid in alive if not is_gone(pid)}
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    return alive


# --------------------------------------------------------------------------------------------
# Plain tasks
# --------------------------------------------------------------------------------------------


def square(x: int) -> int:
    return x * x


def add(x: int, y: int) -> int:
    return x + y


def add3(x: int, y: int, z: int) -> int:
    return x + y + z


def identity(x: Any) -> Any:
    return x


def getpid(*_args: Any) -> int:
    return os.getpid()


def with_kwargs(a: int, *, b: int = 0, timeout: float | None = None) -> tuple[int, int, Any]:
    return a, b, timeout


def sleep_then(x: Any, seconds: float) -> Any:
    time.sleep(seconds)
    return x


_calls = 0


def counted(_item: Any = None) -> tuple[int, int]:
    """``(pid, n)`` where n counts the calls of this function in this worker process."""
    global _calls
    _calls += 1
    return os.getpid(), _calls


def raise_value_error(message: str) -> None:
    raise ValueError(message)


def fail_at(x: int, bad: int) -> int:
    if x == bad:
        raise ValueError(f"item {x} is bad")
    return x


def rendezvous(directory: str, count: int) -> int:
    """Announce this worker, then wait until ``count`` tasks have announced themselves.

    Completes only if ``count`` of these tasks run at the same time, in different processes.
    """
    write_atomic(os.path.join(directory, f"{os.getpid()}.pid"), str(os.getpid()))
    deadline = time.monotonic() + WAIT
    while len([n for n in os.listdir(directory) if n.endswith(".pid")]) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"fewer than {count} tasks ran at the same time")
        time.sleep(0.005)
    return os.getpid()


def block(pid_path: Any, release_path: Any) -> int:
    """Write this worker's pid to ``pid_path``, then wait until ``release_path`` exists.

    Tests that kill the worker never create ``release_path``; the bounded wait keeps a test
    that fails to kill it from hanging forever.
    """
    write_atomic(pid_path, str(os.getpid()))
    wait_for(release_path)
    return os.getpid()


def hang() -> str:
    """Run (far) longer than any timeout the tests set."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        time.sleep(0.05)
    return "the pool did not kill me"


def log_and_hang(log: Any) -> str:
    """Append this worker's pid to ``log``, then hang."""
    with open(log, "a") as f:
        f.write(f"{os.getpid()}\n")
    return hang()


def touch(path: Any) -> None:
    write_atomic(path, str(os.getpid()))


# --------------------------------------------------------------------------------------------
# Crashing tasks
# --------------------------------------------------------------------------------------------


def sigkill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def segfault() -> None:
    ctypes.string_at(0)


def exit_with(code: int) -> None:
    os._exit(code)


def crash_first_time(marker: Any) -> int:
    """SIGKILL this worker on the first call (recording its pid in ``marker``); return the pid
    of the worker running the second."""
    if not os.path.exists(marker):
        write_atomic(marker, str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return os.getpid()


def crash_and_log(log: Any) -> None:
    """Append this worker's pid to ``log``, then die."""
    with open(log, "a") as f:
        f.write(f"{os.getpid()}\n")
    os.kill(os.getpid(), signal.SIGKILL)


# --------------------------------------------------------------------------------------------
# Initializers
# --------------------------------------------------------------------------------------------

_state: Any = None


def set_state(value: Any) -> None:
    global _state
    _state = value


def get_state(*_args: Any) -> Any:
    return _state


def init_and_record(value: Any, directory: Any) -> None:
    """Set the worker's state and leave a file named after its pid in ``directory``."""
    set_state(value)
    write_atomic(os.path.join(directory, f"{os.getpid()}.init"), str(os.getpid()))


def print_pid() -> None:
    """Tell whoever reads this worker's stdout which pid it has."""
    os.write(1, f"worker {os.getpid()}\n".encode())  # one write: lines never interleave


def failing_init(message: str) -> None:
    raise RuntimeError(message)


def hanging_init() -> None:
    hang()


def exiting_init(code: int) -> None:
    os._exit(code)


def init_once_then_fail(marker: Any) -> None:
    """Succeed in the first worker ever started (which writes its pid to ``marker``), fail in
    every later one, even when several start at the same time."""
    tmp = f"{marker}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(str(os.getpid()))
    try:
        os.link(tmp, marker)  # atomic: exactly one worker wins
    except FileExistsError:
        raise RuntimeError("this initializer fails in every worker but the first") from None
    finally:
        os.unlink(tmp)


# --------------------------------------------------------------------------------------------
# Serialization edge cases
# --------------------------------------------------------------------------------------------


def return_lock() -> Any:
    return threading.Lock()


def _refuse(message: str) -> Any:
    raise RuntimeError(message)


class Unloadable:
    """Pickles fine, but unpickling it raises."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_refuse, ("Unloadable refuses to be unpickled",))


def return_unloadable() -> Unloadable:
    return Unloadable()


class CustomError(Exception):
    """A picklable exception defined by the user."""


def raise_custom(message: str) -> None:
    raise CustomError(message)


class TwoArgError(Exception):
    """Pickles, but cannot be unpickled: ``__init__`` needs two arguments, ``args`` holds one."""

    def __init__(self, a: Any, b: Any) -> None:
        super().__init__(f"{a} and {b} went wrong")


def raise_two_arg(a: Any, b: Any) -> None:
    raise TwoArgError(a, b)


class LockedError(Exception):
    """Cannot even be pickled: it holds a lock."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


def raise_locked(message: str) -> None:
    raise LockedError(message)


def length(data: Any) -> int:
    return len(data)


def make_bytes(n: int) -> bytes:
    return bytes(range(256)) * (n // 256) + bytes(n % 256)


def keywords(**kwargs):
    return kwargs


_trims = 0


def count_trims() -> None:
    """Initializer: count the calls of ``memwise.memory.trim`` in this worker."""
    import memwise.memory

    real = memwise.memory.trim

    def counting() -> int | None:
        global _trims
        _trims += 1
        return real()

    memwise.memory.trim = counting  # type: ignore[assignment]


def trims_so_far(*_args: Any) -> int:
    return _trims


def parent_pid(*_args: Any) -> int:
    return os.getppid()


def raise_from(directory: str, module: str) -> None:
    """Raise ``module.Failure`` from a module only this worker can import (``directory`` is
    added to its path, not the parent's): the exception cannot be rebuilt in the parent."""
    sys.path.insert(0, directory)
    failure = importlib.import_module(module).Failure
    raise failure("raised where only the worker knows the class")
