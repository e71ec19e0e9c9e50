"""MemoryBudget: admission control by measured memory.

A concurrency limit ("at most 4 tasks") is a guess at memory; a budget measures it. Work is
admitted only while the *measured* total (this process's private memory, the private memory of
the workers it tracks, and the shared-memory slots in use) plus what running work has reserved
plus the new reservation fits under the limit. Otherwise it waits, and past ``max_wait`` it
fails with a :class:`~memwise.errors.MemoryBudgetExceeded` that says what was asked, what was in
use and the limit, instead of the process being killed by the OOM killer.

Reservations are held until the work ends, on top of what is measured, so the budget errs on the
side of caution: memory a running task has already allocated counts twice until it finishes.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from memwise.errors import MemoryBudgetExceeded
from memwise.memory import format_size, parse_size, private_memory

__all__ = ["MemoryBudget", "Reservation"]


class Reservation:
    """Bytes held in a budget until :meth:`release` (idempotent)."""

    __slots__ = ("_budget", "nbytes")

    def __init__(self, budget: MemoryBudget, nbytes: int) -> None:
        self._budget: MemoryBudget | None = budget
        self.nbytes = nbytes

    def release(self) -> None:
        budget, self._budget = self._budget, None
        if budget is not None:
            budget._release(self.nbytes)


class MemoryBudget:
    """A memory limit shared by pools and code that reserves memory directly.

    Args:
        limit: bytes, a size string such as ``"4 GiB"``, or a float in (0, 1]: that fraction of
            the memory available when the budget is created.
        max_wait: seconds work may wait for room before failing with ``MemoryBudgetExceeded``.
        poll: how often waiting work re-measures, in seconds (memory also frees without any
            event memwise could wait on).
        learn: in pools, measure each task's peak memory (Linux) and reserve, for a task
            submitted without ``memory=``, the largest recent peak of its function.

    Thread-safe. ``with budget.reserve("600 MiB"): ...`` guards a block of code;
    ``WorkerPool(budget=budget)`` with ``pool.options(memory="600 MiB").submit(...)`` guards tasks.
    """

    def __init__(
        self,
        limit: int | float | str,
        *,
        max_wait: float = 60.0,
        poll: float = 0.05,
        learn: bool = False,
    ):
        self.limit = parse_size(limit)
        self.learn = learn
        if max_wait < 0 or poll <= 0:
            raise ValueError("max_wait must be >= 0 and poll > 0")
        self.max_wait = max_wait
        self.poll = poll
        self._lock = threading.Condition()
        self._reserved = 0
        self._pids: set[int] = set()

    def __repr__(self) -> str:
        return (
            f"MemoryBudget(limit={format_size(self.limit)}, reserved="
            f"{format_size(self._reserved)}, max_wait={self.max_wait})"
        )

    @property
    def reserved(self) -> int:
        """Bytes currently reserved by running work."""
        return self._reserved

    def track(self, pid: int) -> None:
        """Count ``pid``'s private memory as in use (pools register their workers)."""
        with self._lock:
            self._pids.add(pid)

    def untrack(self, pid: int) -> None:
        with self._lock:
            self._pids.discard(pid)
            self._lock.notify_all()

    def in_use(self) -> int:
        """Measured bytes: this process, tracked processes, shared-memory slots in use."""
        with self._lock:
            pids = list(self._pids)
        total = private_memory()
        for pid in pids:
            try:
                total += private_memory(pid)
            except (ProcessLookupError, PermissionError):
                continue
        return total + _slots_in_use()

    def try_reserve(self, amount: int | str = 0) -> Reservation | None:
        """Reserve ``amount`` if it fits now; None otherwise. Never waits."""
        nbytes = parse_size(amount)
        measured = self.in_use()
        with self._lock:
            if measured + self._reserved + nbytes > self.limit:
                return None
            self._reserved += nbytes
        return Reservation(self, nbytes)

    def acquire(self, amount: int | str = 0, *, timeout: float | None = None) -> Reservation:
        """Wait until ``amount`` fits, up to ``timeout`` (default ``max_wait``) seconds."""
        nbytes = parse_size(amount)
        wait = self.max_wait if timeout is None else timeout
        if nbytes > self.limit:
            raise self.exceeded(nbytes, 0.0)  # it can never fit: waiting would only delay this
        deadline = time.monotonic() + wait
        while True:
            reservation = self.try_reserve(nbytes)
            if reservation is not None:
                return reservation
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self.exceeded(nbytes, wait)
            with self._lock:
                self._lock.wait(min(self.poll, remaining))

    @contextmanager
    def reserve(self, amount: int | str = 0, *, timeout: float | None = None) -> Iterator[None]:
        """``with budget.reserve("600 MiB"):`` run the block once the amount fits."""
        reservation = self.acquire(amount, timeout=timeout)
        try:
            yield
        finally:
            reservation.release()

    def exceeded(self, nbytes: int, waited: float) -> MemoryBudgetExceeded:
        """The error for a request of ``nbytes`` that found no room within ``waited`` s."""
        return MemoryBudgetExceeded(
            f"asked for {format_size(nbytes)} of memory but {format_size(self.in_use())} is in "
            f"use and {format_size(self._reserved)} reserved, against a limit of "
            f"{format_size(self.limit)}; waited {waited:.1f} s. Raise the limit, reserve less, "
            "or run fewer tasks at once"
        )

    def _release(self, nbytes: int) -> None:
        with self._lock:
            self._reserved -= nbytes
            self._lock.notify_all()


def _slots_in_use() -> int:
    # Only if this process uses shared memory at all: importing it here would cost more
    # than it measures.
    shared = sys.modules.get("memwise.shared")
    if shared is None:
        return 0
    return int(shared.stats().in_use_bytes)
