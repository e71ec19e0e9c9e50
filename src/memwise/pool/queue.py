"""The supervisor's queue of tasks waiting for a worker.

Three rules shape it. Higher ``priority`` runs first (live input before batch work). Tasks with
a ``key`` are pinned to one worker lane and run in submission order, whatever their priority,
so a key's work is never reordered (a recognizer must see an audio file's segments in order).
Everything else is first come, first served. Each key therefore has its own FIFO, and the
keys pinned to a lane compete by the priority of their head task.

Ties are broken by submission order (``Task.seq``), which also lets a re-queued task (its
worker died) go back to exactly where it was. Cancelled tasks are dropped lazily, when popped.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
from collections import deque
from collections.abc import Hashable, Iterable
from functools import lru_cache

from memwise.pool.task import Task

_seq = itertools.count()


def key_bytes(key: Hashable) -> bytes:
    """A stable byte form of a key: the same in every process and every run.

    Python's ``hash()`` is salted per process for str and bytes, so it cannot route keys.
    """
    if isinstance(key, bytes):
        return b"b" + key
    if isinstance(key, str):
        return b"s" + key.encode("utf-8", "surrogatepass")
    if isinstance(key, bool | int | float | tuple) or key is None:
        return b"r" + repr(key).encode()
    raise TypeError(
        f"a task key must be str, bytes, int, float, None or a tuple of those, not "
        f"{type(key).__name__}: keys are hashed by value so they route the same everywhere"
    )


@lru_cache(maxsize=65536)
def _lane_for(data: bytes, lanes: int) -> int:
    def score(lane: int) -> bytes:
        return hashlib.blake2b(data, digest_size=8, salt=lane.to_bytes(8, "little")).digest()

    return max(range(lanes), key=score)


def lane_for(key: Hashable, lanes: int) -> int:
    """The worker lane of ``key``, by rendezvous (highest random weight) hashing.

    Unlike ``hash(key) % lanes``, changing the number of lanes moves only the keys of the
    lanes that were added or removed.
    """
    return _lane_for(key_bytes(key), lanes)


class TaskQueue:
    """Waiting tasks, by lane and key; see the module docstring."""

    def __init__(self) -> None:
        self._general: list[tuple[int, int, Task]] = []
        self._keys: dict[Hashable, deque[Task]] = {}
        self._lane_heads: dict[int, list[tuple[int, int, Hashable]]] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def push(self, task: Task) -> None:
        if task.seq < 0:
            task.seq = next(_seq)
        self._count += 1
        if task.lane is None:
            heapq.heappush(self._general, (-task.priority, task.seq, task))
            return
        fifo = self._keys.setdefault(task.key, deque())
        fifo.append(task)
        if len(fifo) == 1:
            self._announce(task)

    def push_back(self, tasks: Iterable[Task]) -> None:
        """Return tasks that were taken but not run, in their original places."""
        for task in sorted(tasks, key=lambda t: t.seq, reverse=True):
            if task.lane is None:
                self.push(task)
                continue
            fifo = self._keys.setdefault(task.key, deque())
            self._count += 1
            fifo.appendleft(task)
            self._announce(task)

    def pop_for(self, lane: int, general_too: bool = True) -> Task | None:
        """The next task the worker in ``lane`` should run (keyed ones only unless
        ``general_too``), or None."""
        heads = self._lane_heads.get(lane)
        while heads and not self._is_current(heads[0]):
            heapq.heappop(heads)
        general = self._general[0] if self._general and general_too else None
        if heads and (general is None or heads[0][:2] < general[:2]):
            _, _, key = heapq.heappop(heads)
            fifo = self._keys[key]
            task = fifo.popleft()
            if fifo:
                self._announce(fifo[0])
            else:
                del self._keys[key]
        elif general is not None:
            task = heapq.heappop(self._general)[2]
        else:
            return None
        self._count -= 1
        return task

    def peek_key(self, lane: int, general_too: bool = True) -> tuple[bool, Hashable]:
        """Whether the next task for ``lane`` is keyed, and its key (for key-change recycling)."""
        heads = self._lane_heads.get(lane)
        while heads and not self._is_current(heads[0]):
            heapq.heappop(heads)
        general = self._general[0] if self._general and general_too else None
        if heads and (general is None or heads[0][:2] < general[:2]):
            return True, heads[0][2]
        return False, None

    def waiting_lanes(self) -> set[int]:
        """Lanes that have keyed tasks waiting (their workers must be started)."""
        return {lane for lane, heads in self._lane_heads.items() if heads}

    def lane_counts(self) -> dict[int, int]:
        """How many keyed tasks wait for each lane (lanes with none are left out)."""
        counts: dict[int, int] = {}
        for fifo in self._keys.values():
            lane = fifo[0].lane
            assert lane is not None
            counts[lane] = counts.get(lane, 0) + len(fifo)
        return counts

    def general_count(self) -> int:
        return len(self._general)

    def drain(self) -> list[Task]:
        """Remove and return every waiting task."""
        tasks = [entry[2] for entry in self._general]
        for fifo in self._keys.values():
            tasks.extend(fifo)
        self._general.clear()
        self._keys.clear()
        self._lane_heads.clear()
        self._count = 0
        return tasks

    def _announce(self, head: Task) -> None:
        assert head.lane is not None
        heads = self._lane_heads.setdefault(head.lane, [])
        heapq.heappush(heads, (-head.priority, head.seq, head.key))

    def _is_current(self, entry: tuple[int, int, Hashable]) -> bool:
        fifo = self._keys.get(entry[2])
        return fifo is not None and bool(fifo) and fifo[0].seq == entry[1]
