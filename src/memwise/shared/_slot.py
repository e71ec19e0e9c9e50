"""The small types a pool hands around: handles (for messages), slots (leases) and entries."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from memwise.shared._segment import Segment

if TYPE_CHECKING:
    from memwise.shared._pool import SlotPool


@dataclass(frozen=True)
class SlotHandle:
    """What travels in a message: ``nbytes`` at ``offset`` in the segment ``name`` of ``size``."""

    name: str
    size: int
    nbytes: int
    offset: int = 0


class Entry:
    """One segment owned by a pool, with its state (guarded by the pool's lock)."""

    __slots__ = ("borrows", "freed", "generation", "leased", "nbytes", "segment", "since", "site")

    def __init__(self, segment: Segment) -> None:
        self.segment = segment
        self.leased = False
        self.nbytes = 0
        self.generation = 0  # bumped per lease, so a stale Slot cannot release a newer one
        self.borrows: dict[int, int] = {}  # pid -> outstanding loans
        self.site = ""
        self.since = 0.0
        self.freed = 0.0  # when it last became free (monotonic)


class Slot:
    """A lease of one segment: write into :attr:`buf`, send :attr:`handle`, then release.

    ``buf`` is a writable memoryview of exactly ``handle.nbytes`` bytes. Release once, either
    directly or through the array bound to the slot (``memwise.shared.release``).
    """

    __slots__ = ("__weakref__", "_entry", "_generation", "buf", "handle", "pool")

    def __init__(self, pool: SlotPool, entry: Entry, nbytes: int) -> None:
        segment = entry.segment
        self.pool = pool
        self.handle = SlotHandle(segment.name, segment.size, nbytes)
        self.buf = segment.view[:nbytes]
        self._entry = entry
        self._generation = entry.generation

    def release(self) -> None:
        """Give the slot back to its pool (it is reused once no borrower holds it either)."""
        self.pool._release(self)

    def __repr__(self) -> str:
        return f"Slot({self.handle.name!r}, nbytes={self.handle.nbytes})"
