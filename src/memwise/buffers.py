"""BufferPool: a fixed set of preallocated arrays, leased out and given back.

For loops that need a fresh frame-sized array per item (camera frames, tiles): allocating and
page-faulting ~1 MB per item costs more than the work on it, and churns the allocator. The pool
allocates ``size`` arrays once, touches every page up front, and hands them out again and again.

Behaviour when exhausted: :meth:`BufferPool.acquire` waits up to ``timeout`` seconds (None: as
long as it takes) for a buffer to come back, then raises :class:`BufferPoolExhausted` (a
``TimeoutError``). It never returns None and never allocates beyond ``size``: the pool is a hard
bound on memory, and a caller that waits is how back-pressure reaches the producer.

A buffer's contents are whatever its previous holder left. ``release`` takes the very array
``acquire`` returned; a view, a copy, a foreign array or a second release raises ValueError.

``acquire(auto_release=True)`` hands out a lease that also returns itself when the array (and
every view of it) is garbage collected: a safety net for frames that travel far (through a
pipeline, into callbacks) and may be forgotten. Explicit ``release`` stays the normal path.

``available`` counts free buffers; ``resize(shape)`` reallocates them while none is leased.

``shared=True`` puts the buffers in shared-memory slots (``memwise.shared``), so that a leased
buffer sent to a worker travels as a slot handle, without a copy. Release such a buffer only once
the tasks it was sent to have finished: the next holder overwrites it.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import DTypeLike

from memwise import shared
from memwise.errors import BufferPoolExhausted, ClosedError
from memwise.shared import SlotPool

__all__ = ["BufferPool", "BufferPoolStats"]


@dataclass(frozen=True)
class BufferPoolStats:
    """``in_use`` buffers of ``size`` are leased; ``peak_in_use`` is the most at once.

    ``acquired`` counts successful acquires, ``waits`` those that found no buffer free at first,
    ``timeouts`` those that gave up.
    """

    size: int
    in_use: int
    peak_in_use: int
    acquired: int
    waits: int
    timeouts: int


class _Lease:
    """The context manager of :meth:`BufferPool.lease` (a class: cheaper than a generator)."""

    __slots__ = ("_buffer", "_pool", "_timeout")

    def __init__(self, pool: BufferPool, timeout: float | None) -> None:
        self._pool = pool
        self._timeout = timeout

    def __enter__(self) -> np.ndarray:
        self._buffer = self._pool.acquire(self._timeout)
        return self._buffer

    def __exit__(self, *exc_info: object) -> None:
        self._pool.release(self._buffer)


class BufferPool:
    """``size`` preallocated arrays of ``shape`` and ``dtype``, thread-safe.

    >>> frames = BufferPool((480, 640, 3), np.uint8, size=4)
    >>> with frames.lease() as frame:
    ...     frame[...] = 0
    >>> frames.close()
    """

    def __init__(
        self,
        shape: int | tuple[int, ...],
        dtype: DTypeLike = np.uint8,
        size: int = 4,
        *,
        shared: bool = False,
        pool: SlotPool | None = None,
    ) -> None:
        if size < 1:
            raise ValueError(f"a BufferPool needs at least one buffer, got size={size}")
        self.shape = (shape,) if isinstance(shape, int) else tuple(shape)
        self.dtype = np.dtype(dtype)
        self.size = size
        self.shared = shared
        self._slot_pool = pool
        # Reentrant: an auto-release lease may be collected (and give its buffer back) by a
        # garbage collection that runs while this very thread holds the lock.
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._waiting = 0  # acquires blocked in wait: notify only when someone listens
        buffers = [self._make() for _ in range(size)]
        self._buffers = {id(buffer): buffer for buffer in buffers}  # all not yet disposed
        self._free = buffers  # a stack: the most recently used buffer is warm in cache
        self._held: set[int] = set()
        # id(keeper) -> (keeper, its finalizer): the auto-release leases out now.
        self._auto: dict[int, tuple[weakref.ref[np.ndarray], weakref.finalize]] = {}
        self._peak = self._acquired = self._waits = self._timeouts = 0
        self._closed = False

    def _make(self) -> np.ndarray:
        if self.shared:
            return shared.zeros(self.shape, self.dtype, pool=self._slot_pool)
        buffer = np.empty(self.shape, self.dtype)
        buffer.reshape(-1).view(np.uint8).fill(0)  # fault every page in now, not on first use
        return buffer

    @property
    def available(self) -> int:
        """How many buffers are free now."""
        with self._lock:
            return len(self._free)

    def acquire(self, timeout: float | None = None, *, auto_release: bool = False) -> np.ndarray:
        """A free buffer, waiting up to ``timeout`` seconds (None: forever) for one.

        With ``auto_release``, the array returned is a view of the buffer that gives it back
        when it and every array made from it are garbage collected (or on ``release(it)``).
        Raises BufferPoolExhausted if none comes back in time, ClosedError once the pool is closed.
        """
        with self._lock:
            self._check_open()
            if not self._free:
                self._waits += 1
                self._waiting += 1
                try:
                    ready = self._cond.wait_for(lambda: self._free or self._closed, timeout)
                finally:
                    self._waiting -= 1
                if not ready:
                    self._timeouts += 1
                    raise BufferPoolExhausted(
                        f"all {self.size} buffers of {self!r} stayed in use for {timeout:g} s: "
                        "release buffers when done (with pool.lease(): ...), make the pool "
                        "larger, or wait longer"
                    )
                self._check_open()
            buffer = self._free.pop()
            self._held.add(id(buffer))
            self._acquired += 1
            if len(self._held) > self._peak:
                self._peak = len(self._held)
            return self._auto_lease(buffer) if auto_release else buffer

    def _auto_lease(self, buffer: np.ndarray) -> np.ndarray:
        # numpy collapses view chains down to the first base that is not an ndarray: a keeper
        # built on a memoryview is therefore referenced by every array derived from the lease,
        # and its finalizer fires only when the last of them is gone.
        keeper = np.frombuffer(buffer.data, dtype=self.dtype)
        finalizer = weakref.finalize(keeper, self._collected, id(keeper), buffer)
        finalizer.atexit = False
        self._auto[id(keeper)] = (weakref.ref(keeper), finalizer)
        return keeper.reshape(self.shape)

    def _collected(self, key: int, buffer: np.ndarray) -> None:
        with self._lock:
            self._auto.pop(key, None)
            self._give_back(buffer)

    def _find_auto(self, array: np.ndarray) -> weakref.finalize | None:
        obj: object = array
        while isinstance(obj, np.ndarray):
            entry = self._auto.get(id(obj))
            if entry is not None and entry[0]() is obj:
                return entry[1]
            obj = obj.base
        return None

    def release(self, buffer: np.ndarray) -> None:
        """Give back a buffer from :meth:`acquire`; ValueError if it is not one, or is free."""
        with self._lock:
            finalizer = self._find_auto(buffer)
            if finalizer is not None:
                finalizer()
                return
            self._give_back(buffer)

    def _give_back(self, buffer: np.ndarray) -> None:
        key = id(buffer)
        if self._buffers.get(key) is not buffer:
            raise ValueError(
                f"this array is not a buffer of {self!r}: release the array acquire() "
                "returned, not a view or a copy of it"
            )
        if key not in self._held:
            raise ValueError(f"this buffer of {self!r} was already released")
        self._held.remove(key)
        if self._closed:
            self._dispose(buffer)
        else:
            self._free.append(buffer)
            if self._waiting:
                self._cond.notify()

    def lease(self, timeout: float | None = None) -> _Lease:
        """``with pool.lease() as buffer:`` acquire, then release however the block ends."""
        return _Lease(self, timeout)

    def stats(self) -> BufferPoolStats:
        with self._cond:
            return BufferPoolStats(
                size=self.size,
                in_use=len(self._held),
                peak_in_use=self._peak,
                acquired=self._acquired,
                waits=self._waits,
                timeouts=self._timeouts,
            )

    def resize(self, shape: int | tuple[int, ...], dtype: DTypeLike | None = None) -> None:
        """Replace every buffer by one of ``shape`` (and ``dtype``); only while none is leased.

        For a camera whose resolution changed. ValueError if a buffer is leased, ClosedError if
        the pool is closed.
        """
        with self._lock:
            self._check_open()
            if self._held:
                raise ValueError(
                    f"{len(self._held)} buffer(s) of {self!r} are leased: release them "
                    "before resize()"
                )
            for buffer in self._free:
                self._dispose(buffer)
            self.shape = (shape,) if isinstance(shape, int) else tuple(shape)
            if dtype is not None:
                self.dtype = np.dtype(dtype)
            self._free = [self._make() for _ in range(self.size)]
            self._buffers = {id(buffer): buffer for buffer in self._free}

    def close(self) -> None:
        """Free the buffers; leased ones are freed when released. Waiting acquires fail."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            free, self._free = self._free, []
            for buffer in free:
                self._dispose(buffer)
            self._cond.notify_all()

    def _dispose(self, buffer: np.ndarray) -> None:
        del self._buffers[id(buffer)]
        if self.shared:
            shared.release(buffer)

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"{self!r} is closed; create a new one")

    def __enter__(self) -> BufferPool:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"BufferPool({self.shape}, {self.dtype}, size={self.size}, shared={self.shared})"
