"""A pool's lanes: how many there are, and the lane each task key runs in.

A lane is a place for one worker process; it keeps its number across restarts. A keyed task
runs in the lane that rendezvous hashing (:func:`memwise.pool.queue.lane_for`) gives its key,
so that when ``pool.resize(n)`` changes the number of lanes only about 1/n of the keys move.
One rule beats the hash: a key never moves while one of its tasks is queued or running, or its
tasks could run out of order in two lanes at once. So a key is *pinned* to its lane from the
submission of a task until the last of its tasks has finished (its future is done); only an
unpinned key is routed afresh.

After a shrink, lanes at or above the new count *drain*: they take no new key and no unkeyed
task, run the tasks of the keys still pinned to them, and then their workers retire.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable

from memwise.pool.queue import lane_for


class Lanes:
    """The lane count and the key pins of one pool (thread-safe)."""

    def __init__(self, count: int, minimum: int) -> None:
        # Written by ``resize`` under the supervisor's state lock and pool lock; read anywhere.
        self.count = count
        self.minimum = minimum  # workers kept even when idle (lanes 0 .. minimum-1)
        self._lock = threading.Lock()  # guards _pins; futures' callbacks take it
        self._pins: dict[Hashable, list[int]] = {}  # key -> [lane, tasks not yet done]

    def route(self, key: Hashable) -> int:
        """The lane of a new task of ``key``, which stays pinned there until ``release``."""
        with self._lock:
            pin = self._pins.get(key)
            if pin is None:
                pin = self._pins[key] = [lane_for(key, self.count), 0]
            pin[1] += 1
            return pin[0]

    def release(self, key: Hashable) -> int | None:
        """A task of ``key`` is done; return the lane if that unpinned it from a draining lane."""
        with self._lock:
            pin = self._pins[key]
            pin[1] -= 1
            if pin[1]:
                return None
            del self._pins[key]
            return pin[0] if pin[0] >= self.count else None

    def pinned(self, lane: int) -> bool:
        """Whether some key with unfinished tasks is pinned to ``lane``."""
        with self._lock:
            return any(pin[0] == lane for pin in self._pins.values())

    def resize(self, count: int) -> int:
        """Set the number of lanes; return the previous one. ``minimum`` follows (see api)."""
        previous = self.count
        if self.minimum == previous or self.minimum > count:
            self.minimum = count
        self.count = count
        return previous
