"""Task functions for the Executor contract tests (module level, so every start method pickles
them)."""

from __future__ import annotations

import os
import signal
import time
from typing import Any


class Box:
    """A result that can be watched with a weak reference once the caller has it."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Box) and other.value == self.value

    def __hash__(self) -> int:
        return hash(self.value)


def box(value: Any) -> Box:
    return Box(value)


_handed: dict[str, Any] = {}


def keep_handed(**objects: Any) -> None:
    """An initializer: keep what it was handed for the tasks of this worker."""
    _handed.update(objects)


def keep_queue(queue: Any) -> None:
    keep_handed(queue=queue)


def keep_all(queue: Any, event: Any, lock: Any, proxy: Any) -> None:
    keep_handed(queue=queue, event=event, lock=lock, proxy=proxy)


def report(value: Any) -> int:
    """Put ``(pid, value)`` on the handed queue (a logging queue, typically)."""
    _handed["queue"].put((os.getpid(), value))
    return os.getpid()


def use_all(value: Any) -> Any:
    """Use each handed object: wait for the event, append to the proxy under the lock."""
    if not _handed["event"].wait(30):
        raise TimeoutError("the event was never set")
    with _handed["lock"]:
        _handed["proxy"].append(value)
    _handed["queue"].put(value)
    return value


def negate(array: Any) -> Any:
    return -array


def fail(message: str) -> None:
    raise ValueError(message)


def square_or_fail(x: int, bad: int) -> int:
    if x == bad:
        fail(f"item {x} is bad")
    return x * x


def killed_at(x: int, bad: int) -> int:
    """SIGKILL this worker on item ``bad``; square the others."""
    if x == bad:
        os.kill(os.getpid(), signal.SIGKILL)
    return x * x


def wait_file(path: str) -> str:
    """Block until ``path`` exists (bounded), then return it."""
    deadline = time.monotonic() + 30
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.005)
    return path
