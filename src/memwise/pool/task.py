"""A unit of work as the supervisor sees it."""

from __future__ import annotations

import itertools
from collections.abc import Hashable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from memwise import _wire

if TYPE_CHECKING:
    from memwise._oob import Outgoing

_ids = itertools.count(1)


class Task:
    """One submitted call: its pickled form, its future and what the policies need to know.

    ``attempts`` counts how many times a worker died while running it, so that ``retries``
    can bound re-runs; tasks that were merely queued behind it on a dead worker don't count.
    ``claimed`` is set once the future is marked running, which may happen only once even if
    the task is re-queued. ``lane`` is the worker lane a keyed task is pinned to.
    """

    __slots__ = (
        "announced",
        "attempts",
        "blocked_since",
        "claimed",
        "coalesce",
        "dropped",
        "fn",
        "future",
        "id",
        "key",
        "lane",
        "memory",
        "outgoing",
        "payload",
        "priority",
        "reservation",
        "seq",
        "timeout",
    )

    def __init__(
        self,
        future: Future[Any],
        payload: bytes,
        fn: Any,
        timeout: float | None = None,
        *,
        key: Hashable = None,
        priority: int = 0,
        coalesce: Hashable = None,
        memory: int = 0,
        outgoing: Outgoing | None = None,
    ) -> None:
        self.future = future
        self.payload = payload
        self.fn = fn
        self.timeout = timeout
        self.key = key
        self.lane: int | None = None  # set when the pool routes its key (see pool.lanes)
        self.priority = priority
        self.coalesce = coalesce
        self.memory = memory  # bytes reserved in the pool's MemoryBudget while it runs
        self.outgoing = outgoing  # slots holding its large arguments (see memwise._oob)
        self.reservation: Any = None
        self.blocked_since: float | None = None  # when the budget first had no room for it
        self.id = next(_ids)
        self.seq = -1  # submission order, set when first queued
        self.attempts = 0
        self.claimed = False
        self.dropped = False
        self.announced = False  # its task_started event went out (since its last retry)

    def claim(self) -> bool:
        """Mark the future running before sending the task; False if it was cancelled.

        Supervisor thread only (or a submitting thread holding a future nobody else has).
        """
        if self.dropped:
            return False
        if not self.claimed:
            self.claimed = self.future.set_running_or_notify_cancel()
        return self.claimed

    def lend_slots(self, pid: int) -> tuple[Any, ...]:
        """Lend the slots of its large arguments to worker ``pid``; their handles."""
        return () if self.outgoing is None else self.outgoing.lend(pid)

    def release_memory(self) -> None:
        """Give back the task's budget reservation (it ended, or goes back to the queue)."""
        if self.reservation is not None:
            self.reservation.release()
            self.reservation = None

    def drop(self) -> bool:
        """Cancel a queued task for good; True if it had not started. Supervisor thread only.

        The future is also notified, so ``wait()`` and ``as_completed()`` see it at once
        instead of when the task would have reached the head of the queue.
        """
        if self.dropped or self.claimed:
            return False
        self.dropped = True
        if self.future.cancel():
            self.future.set_running_or_notify_cancel()
            return True
        return False

    @property
    def label(self) -> str:
        """The function's name, for messages and per-function statistics."""
        return _wire.describe(self.fn)

    def __str__(self) -> str:
        return f"task {self.id} ({self.label})"
