"""A lock that garbage-collector finalizers can call into from anywhere, even from inside it.

Slots are released by ``weakref.finalize`` callbacks, which the cyclic garbage collector may run
on any thread at any allocation, including one in the middle of a pool method that holds this
lock. A plain lock would deadlock there, a re-entrant one would let the callback change state
behind the running method. This guard defers such a call until the running method leaves, and
runs it at once otherwise.
"""

from __future__ import annotations

import sys
import threading
from collections import deque
from collections.abc import Callable
from typing import Any


class Guard:
    """``with guard:`` holds the lock; calls deferred meanwhile run before it is let go.

    A class rather than a generator context manager: pool methods enter it twice per slot.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.RLock())
        self._busy = False  # only read or written while holding the lock
        self._deferred: deque[tuple[Callable[[Any], None], Any]] = deque()

    def __enter__(self) -> None:
        self._cond.acquire()
        self._busy = True

    def __exit__(self, *exc_info: object) -> None:
        try:
            while self._deferred:
                call, arg = self._deferred.popleft()
                try:
                    call(arg)
                except Exception:  # its caller, a finalizer, is gone: report as it would
                    sys.excepthook(*sys.exc_info())
        finally:
            self._busy = False
            self._cond.release()

    def run_or_defer(self, call: Callable[[Any], None], arg: Any) -> None:
        """``call(arg)`` under the lock, or after the current holder if this thread is it."""
        with self._cond:
            if self._busy:  # re-entered: a finalizer run by the GC inside a critical section
                self._deferred.append((call, arg))
                return
            with self:
                call(arg)

    def wait(self, seconds: float) -> None:
        """Inside ``with guard``: let go of the lock until notified or ``seconds`` pass."""
        self._busy = False
        self._cond.wait(min(seconds, threading.TIMEOUT_MAX))
        self._busy = True

    def notify_all(self) -> None:
        self._cond.notify_all()
