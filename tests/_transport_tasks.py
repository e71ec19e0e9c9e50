"""Task functions and payload types for the transport tests (tests/test_transport.py).

Workers import this module by name, so everything they run or unpickle lives here, at module
level. Waiting is done on files, as in ``_tasks``: they work across any process boundary and
survive a SIGKILL.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import signal
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from _tasks import wait_for, write_atomic


@dataclass
class Box:
    """A dataclass holding arrays, to check that buffers are found inside arbitrary objects."""

    label: str
    array: np.ndarray
    more: list[Any] = field(default_factory=list)


def echo(value: Any) -> Any:
    """Send the value straight back: what arrives in the parent went through both directions."""
    return value


def negate(array: np.ndarray) -> np.ndarray:
    return -array


def one_minus(array: np.ndarray) -> np.ndarray:
    return 1 - array


def checksum(array: np.ndarray) -> str:
    """A digest of the bytes the worker sees (small result: it travels inline)."""
    return _digest(array)


def _digest(array: np.ndarray) -> str:
    # Not hash(): string hashing is salted per process, and the digest crosses processes.
    return hashlib.blake2b(np.ascontiguousarray(array).tobytes(), digest_size=16).hexdigest()


def slot_backed(array: np.ndarray) -> bool:
    """Whether the array's memory is a shared-memory mapping, found through public attributes.

    Views received from a slot are built on a memoryview of the segment's ``mmap``; arrays
    unpickled from the pipe own their memory (or sit on a bytearray/bytes) instead.
    """
    obj: Any = array
    for _ in range(64):
        if isinstance(obj, mmap.mmap):
            return True
        if isinstance(obj, np.ndarray):
            obj = obj.base
        elif isinstance(obj, memoryview):
            obj = obj.obj
        else:
            return False
    return False


def inspect(value: Any) -> dict[str, Any]:
    """How an argument arrived in the worker: flags and whether it lives in a slot."""
    return {
        "writeable": bool(value.flags.writeable),
        "slot_backed": slot_backed(value),
        "digest": _digest(value),
    }


def inspect_nested(payload: dict[str, Any]) -> list[tuple[bool, bool]]:
    """(writeable, slot_backed) for every array in a dict/list/tuple/Box payload, in order."""
    return [(bool(array.flags.writeable), slot_backed(array)) for array in _arrays_in(payload)]


def _arrays_in(value: Any) -> list[np.ndarray]:
    if isinstance(value, np.ndarray):
        return [value]
    if isinstance(value, dict):
        return [a for item in value.values() for a in _arrays_in(item)]
    if isinstance(value, (list, tuple)):
        return [a for item in value for a in _arrays_in(item)]
    if isinstance(value, Box):
        return [*_arrays_in(value.array), *_arrays_in(value.more)]
    return []


def hold(array: np.ndarray, pid_path: str, go_path: str) -> str:
    """Keep the argument borrowed until ``go_path`` appears; report the pid first."""
    write_atomic(pid_path, str(os.getpid()))
    wait_for(go_path)
    return _digest(array)


def hold_forever(array: np.ndarray, pid_path: str) -> None:
    """Keep the argument borrowed and wait to be killed (bounded by _tasks.WAIT)."""
    write_atomic(pid_path, str(os.getpid()))
    wait_for(f"{pid_path}.never")


class DieWhenPickled:
    """Kills its process when pickled: a worker dies half way through sending its result."""

    def __reduce__(self) -> tuple[Any, ...]:
        os.kill(os.getpid(), signal.SIGKILL)
        raise AssertionError("unreachable")


def die_while_sending(arrays: list[np.ndarray], pid_path: str) -> list[Any]:
    """Return big arrays (copied into result slots first), then die while pickling the rest."""
    write_atomic(pid_path, str(os.getpid()))
    return [*(array.copy() for array in arrays), DieWhenPickled()]


def make_array(nbytes: int) -> np.ndarray:
    """A fresh uint8 array of ``nbytes`` made in the worker (it travels back through a slot)."""
    return np.arange(nbytes, dtype=np.uint8)


def full_shared_memory() -> None:
    """Worker initializer: /dev/shm looks full to this process (as in tests/test_shared*)."""
    import memwise.shared._segment as segment

    segment.shm_free_bytes = lambda: 4096  # type: ignore[assignment]


def one_minus_in_a_slot(array: np.ndarray) -> np.ndarray:
    """``1 - array``, written straight into shared memory: handed over with no copy."""
    from memwise import shared

    out = shared.empty(array.shape, array.dtype)
    np.subtract(1, array, out=out)
    return out
