"""Out-of-band transport: large buffers cross processes through shared-memory slots.

Pickle protocol 5 (PEP 574) hands every large contiguous buffer (an ndarray's data, a
``PickleBuffer``) to a ``buffer_callback`` instead of copying it into the pickle. (``bytes`` and
``bytearray`` objects are always pickled inline by CPython; wrap large ones with
``np.frombuffer`` to send them through a slot.) Here, buffers of
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
  parent's pool when the last array over it is collected. A result the task built in a slot
  (``memwise.shared.empty`` in a worker allocates from that same pool) is handed over with no
  copy at all; the task must not touch it after returning it.
- **Restock**: so that workers need not create (and page-fault) a fresh segment per result,
  the parent gives back warm free slots of the sizes a worker produced, with its next task.
"""

from __future__ import annotations

import pickle
import sys
import threading
import warnings
from typing import TYPE_CHECKING, Any

from memwise.errors import SharedMemoryError

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

        pool = shared.default_pool()
        found = shared.find_slot(buffer)
        # Loans are recorded by the default pool; a slot of another pool is copied instead.
        if found is not None and found[0].pool is pool:
            self.holds.append(buffer)  # keeps the array, hence its slot, alive
            self.handles.append(found[1])
            return False
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
        copy_into(slot.buf, raw)
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


# Above this, a copy is split between this thread and a helper thread: numpy copies release
# the GIL, and one core alone does not saturate memory bandwidth (48 MB: 5.5 ms -> 3.6 ms).
_PARALLEL_COPY = 8 << 20
_copier: Any = None


def copy_into(target: memoryview, source: memoryview) -> None:
    """``target[:] = source`` for byte views of equal length, on two cores when large."""
    global _copier
    if source.nbytes < _PARALLEL_COPY:
        target[:] = source
        return
    import numpy as np

    if _copier is None:
        from concurrent.futures import ThreadPoolExecutor

        _copier = ThreadPoolExecutor(1, thread_name_prefix="memwise-copy")
    half = source.nbytes // 2
    dst = np.frombuffer(target, np.uint8)
    src = np.frombuffer(source, np.uint8)
    other = _copier.submit(np.copyto, dst[half:], src[half:])
    np.copyto(dst[:half], src[:half])
    other.result()


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

    def serve_tasks(self) -> None:
        """Make this pool the process's default (in a worker): arrays a task makes with
        memwise.shared.empty/zeros/copy then come from it, warm from restocking, and a
        result among them is handed over without a copy."""
        from memwise.shared import set_default_pool

        set_default_pool(self.pool())

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
        from memwise import shared

        pool = self.slots.pool()
        slot = shared.hand_over(buffer, pool)
        if slot is None:
            try:
                slot = pool.try_allocate(raw.nbytes)
            except SharedMemoryError:
                slot = None  # full /dev/shm or cap: a result is never lost for that, it goes inline
            if slot is None:
                return True
            copy_into(slot.buf, raw)
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


_pools_open = 0
_pools_lock = threading.Lock()


def pool_opened() -> None:
    """A pool of this process starts using the default slot pool."""
    global _pools_open
    with _pools_lock:
        _pools_open += 1


def pool_closed() -> None:
    """A pool has shut down; the last one to go unlinks the free slots it leaves behind.

    Slots still viewed by results the program holds are freed when those go (and then unlinked
    after the slot pool's idle period).
    """
    global _pools_open
    with _pools_lock:
        _pools_open -= 1
        last = _pools_open == 0
    if last and "memwise.shared" in sys.modules:
        from memwise import shared

        shared.trim()


def reclaim(pid: int) -> None:
    """A worker exited: end its loans, unlink what it created or held and never handed over."""
    if "memwise.shared" in sys.modules:
        from memwise import shared

        shared.default_pool().reclaim(pid)
