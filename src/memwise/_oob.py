"""Out-of-band transport: large buffers cross processes through shared-memory slots.

Pickle protocol 5 (PEP 574) hands every large contiguous buffer (an ndarray's data, a
bytearray, ...) to a ``buffer_callback`` instead of copying it into the pickle. Here, buffers of
at least ``threshold`` bytes go into slots of :mod:`memwise.shared` and only their handles
travel through the pipe; the receiver rebuilds the objects with ``buffers=`` pointing into the
slots, so arrays arrive as views: no copy on receive, one ``memcpy`` on send, and none when an
array already lives in a slot. This works for any object graph (arrays in dicts, lists,
dataclasses), since pickle finds the buffers wherever they are.

Directions and lifetimes (the protocol is :mod:`memwise.shared`'s):

- **Arguments** (parent → worker) are *lent*: the parent holds the slot until the task ends;
  the worker borrows read-only views and returns the handles with the task's result.
- **Results** (worker → parent) are *given*: the worker copies into a slot of a pool named
  after the parent and gives the segment away; the parent adopts it, and it returns to the
  parent's pool when the last array over it is collected.
- **Restock**: so that workers need not create (and page-fault) a fresh segment per result,
  the parent gives back warm free slots of the sizes a worker produced, with its next task.
"""

from __future__ import annotations

import pickle
import warnings
from typing import TYPE_CHECKING, Any

from memwise.errors import SharedMemoryExhausted

if TYPE_CHECKING:
    from memwise.shared import Slot, SlotHandle, SlotPool

DEFAULT_THRESHOLD = 1 << 20


class Outgoing:
    """The ``buffer_callback`` for one call sent by the parent: lends large buffers.

    ``handles`` name the slots in order; ``holds`` keeps the slots (and the exporters of buffers
    that already lived in slots) alive until :meth:`release`, when the task has ended.
    """

    __slots__ = ("fallback", "handles", "holds", "threshold")

    def __init__(self, threshold: int, fallback: bool) -> None:
        self.threshold = threshold
        self.fallback = fallback
        self.handles: list[SlotHandle] = []
        self.holds: list[Any] = []

    def __call__(self, buffer: pickle.PickleBuffer) -> bool:
        raw = buffer.raw()
        if raw.nbytes < self.threshold:
            return True
        from memwise import shared

        found = shared.find_slot(buffer)
        if found is not None:
            self.holds.append(buffer)  # keeps the array, hence its slot, alive
            self.handles.append(found[1])
            return False
        pool = shared.default_pool()
        slot = pool.try_allocate(raw.nbytes, timeout=0.0 if self.fallback else pool.wait)
        if slot is None:
            if not self.fallback:
                raise pool._exhausted(raw.nbytes, pool.wait)
            warnings.warn(
                f"shared memory is full: a {raw.nbytes / 2**20:.1f} MiB buffer is pickled "
                "inline instead (slower); release arrays or raise the shared-memory cap",
                RuntimeWarning,
                stacklevel=2,
            )
            return True
        slot.buf[:] = raw
        self.holds.append(slot)
        self.handles.append(slot.handle)
        return False

    def lend(self, pid: int) -> tuple[SlotHandle, ...]:
        """Record that worker ``pid`` borrows the slots; returns the handles to send."""
        if not self.handles:
            return ()
        from memwise import shared

        pool = shared.default_pool()
        for handle in self.handles:
            pool.lend(handle, to=pid)
        return tuple(self.handles)

    def release(self) -> None:
        holds, self.holds = self.holds, []
        for hold in holds:
            if not isinstance(hold, pickle.PickleBuffer):
                hold.release()

    def reset(self) -> None:
        self.release()
        self.handles = []


def borrowed(handles: tuple[SlotHandle, ...]) -> list[Any]:
    """Worker side: read-only views of lent slots, for ``pickle.loads(buffers=...)``."""
    if not handles:
        return []
    from memwise import shared

    return [shared.borrow(handle) for handle in handles]


def returns() -> list[SlotHandle]:
    """Worker side: handles of lent slots no longer viewed, to send back to the parent."""
    from memwise import shared

    return shared.take_returns()


class WorkerSlots:
    """The worker's pool of result slots, named after (and given to) the parent."""

    def __init__(self, owner: Any, threshold: int) -> None:
        self.threshold = threshold
        self._owner = owner
        self._pool: SlotPool | None = None

    def pool(self) -> SlotPool:
        if self._pool is None:
            from memwise.shared import SlotPool

            self._pool = SlotPool(owner=self._owner, sweep=False)
        return self._pool

    def stock(self, handles: tuple[SlotHandle, ...]) -> None:
        """Adopt warm slots the parent gave back, free for the next results."""
        for handle in handles:
            self.pool().adopt(handle).release()

    def encoder(self) -> Incoming:
        return Incoming(self)


class Incoming:
    """The ``buffer_callback`` for one result sent by a worker: gives large buffers away."""

    __slots__ = ("gifts", "slots")

    def __init__(self, slots: WorkerSlots) -> None:
        self.slots = slots
        self.gifts: list[SlotHandle] = []

    def __call__(self, buffer: pickle.PickleBuffer) -> bool:
        raw = buffer.raw()
        if raw.nbytes < self.slots.threshold:
            return True
        pool = self.slots.pool()
        try:
            slot = pool.try_allocate(raw.nbytes)
        except SharedMemoryExhausted:
            slot = None
        if slot is None:
            return True  # a result is never lost for want of shared memory: pickle it inline
        slot.buf[:] = raw
        self.gifts.append(pool.give(slot))
        return False

    def reset(self) -> None:
        pool = self.slots.pool()
        for handle in self.gifts:
            pool.adopt(handle).release()  # back to this worker's stock
        self.gifts = []


def adopted(handles: tuple[SlotHandle, ...]) -> list[Any]:
    """Parent side: take ownership of result slots; views that free them when collected."""
    if not handles:
        return []
    from memwise import shared

    pool = shared.default_pool()
    return [shared.slot_array(pool.adopt(handle)) for handle in handles]


def restock(handles_by_size: dict[int, int], pid: int) -> tuple[SlotHandle, ...]:
    """Give worker ``pid`` warm free slots: up to ``count`` of each result size it produced."""
    from memwise import shared

    pool = shared.default_pool()
    gifts = []
    for nbytes, count in handles_by_size.items():
        for _ in range(count):
            slot: Slot | None = pool.take_free(nbytes)
            if slot is None:
                break
            gifts.append(pool.give(slot, to=pid))
    return tuple(gifts)


def returned(handles: list[SlotHandle], pid: int) -> None:
    if handles:
        from memwise import shared

        shared.default_pool().returned(handles, by=pid)


def reclaim(pid: int) -> None:
    """A worker exited: end its loans, unlink what it created or held and never handed over."""
    import sys

    if "memwise.shared" in sys.modules:
        from memwise import shared

        shared.default_pool().reclaim(pid)
