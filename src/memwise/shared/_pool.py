"""SlotPool: pooled, pre-faulted shared-memory slots under a byte cap, and who holds each one.

A pool owns segments. Each is free (kept mapped for the next request of its size class), leased
to a local :class:`Slot`, and/or lent to other processes (borrowers). It goes back to the free
list when the lease is released and every borrower has returned it. Ownership moves between
processes with :meth:`SlotPool.give` and :meth:`SlotPool.adopt`. The protocol is described in the
package docstring.

Releases come from ``weakref.finalize`` callbacks too, which the garbage collector may run on any
thread, including one already inside this pool: such a release is queued and applied when that
thread leaves the pool (see ``_critical``), so pool state is never changed behind a running
method.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass

from memwise.errors import SharedMemoryError, SharedMemoryExhausted
from memwise.shared import _cache, _segment
from memwise.shared._names import Owner, current_owner, new_name
from memwise.shared._report import SizeClassStats, SlotLeak, SlotStats, caller_site
from memwise.shared._segment import Segment
from memwise.shared._sizes import size_class
from memwise.shared._sweep import sweep_created_by, sweep_orphans

_MIB = 1024 * 1024


@dataclass(frozen=True)
class SlotHandle:
    """What travels in a message: ``nbytes`` at ``offset`` in the segment ``name`` of ``size``."""

    name: str
    size: int
    nbytes: int
    offset: int = 0


class _Entry:
    """One segment owned by a pool, with its state."""

    __slots__ = ("borrows", "generation", "leased", "nbytes", "segment", "since", "site")

    def __init__(self, segment: Segment) -> None:
        self.segment = segment
        self.leased = False
        self.nbytes = 0
        self.generation = 0  # bumped per lease, so a stale Slot cannot release a newer one
        self.borrows: dict[int, int] = {}  # pid -> outstanding loans
        self.site = ""
        self.since = 0.0


class Slot:
    """A lease of one segment: write into :attr:`buf`, send :attr:`handle`, then release.

    ``buf`` is a writable memoryview of exactly ``handle.nbytes`` bytes. Release once, either
    directly or through the array bound to the slot (``memwise.shared.release``).
    """

    __slots__ = ("__weakref__", "_entry", "_generation", "buf", "handle", "pool")

    def __init__(self, pool: SlotPool, entry: _Entry, nbytes: int) -> None:
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


def default_cap() -> int:
    """Half of /dev/shm, or half of physical memory where there is no /dev/shm to measure."""
    total = _segment.shm_total_bytes()
    if total is None:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return total // 2


def _unlink_all(pid: int, entries: dict[str, _Entry], given: dict[int, set[str]]) -> None:
    # A forked child inherits the pool object but not the right to remove its segments.
    if os.getpid() != pid:
        return
    for name in [*entries, *(name for names in given.values() for name in names)]:
        _segment.unlink(name)


class SlotPool:
    """Shared-memory slots in size classes, reused, with a cap on the bytes the pool owns.

    ``cap`` (default: :func:`default_cap`) bounds the segments the pool owns, free or in use;
    when a request does not fit, free slots of other classes are unlinked first (least recently
    used), then the caller waits ``wait`` seconds (``math.inf``: forever) for a release before
    :class:`SharedMemoryExhausted`. ``owner`` names the process answering for the segments: a
    worker creating result slots for its parent passes the parent's ``pool.owner``. Starting a
    pool sweeps orphans of dead owners unless ``sweep=False``.
    """

    def __init__(
        self,
        cap: int | None = None,
        *,
        wait: float = 30.0,
        owner: Owner | None = None,
        sweep: bool = True,
    ) -> None:
        self.owner = owner if owner is not None else current_owner()
        self.cap = cap if cap is not None else default_cap()
        self.wait = wait
        self._cond = threading.Condition(threading.RLock())
        self._busy = False
        self._pending: deque[Slot] = deque()
        self._entries: dict[str, _Entry] = {}
        self._free: OrderedDict[str, _Entry] = OrderedDict()  # least recently released first
        self._given: dict[int, set[str]] = {}  # pid -> names given to it, not yet back
        self._bytes = 0  # owned segments plus sizes reserved for segments being created
        self._counts = dict.fromkeys(("created", "reused", "adopted", "evicted", "waits"), 0)
        self._closed = False
        self._finalizer = weakref.finalize(
            self, _unlink_all, os.getpid(), self._entries, self._given
        )
        if sweep:
            sweep_orphans()

    # -- allocation ------------------------------------------------------------------------

    def allocate(self, nbytes: int, timeout: float | None = None) -> Slot:
        """A slot of at least ``nbytes``; waits up to ``timeout`` (None: the pool's ``wait``).

        Raises SharedMemoryExhausted when the cap stays full, or at once when ``nbytes`` alone
        exceeds the cap; SharedMemoryError when /dev/shm is too small.
        """
        slot = self.try_allocate(nbytes, self.wait if timeout is None else timeout)
        if slot is None:
            raise self._exhausted(nbytes, self.wait if timeout is None else timeout)
        return slot

    def try_allocate(self, nbytes: int, timeout: float = 0.0) -> Slot | None:
        """Like :meth:`allocate`, but None instead of SharedMemoryExhausted.

        The transport's fallback signal: on None it pickles the buffer inline (and warns).
        """
        size = size_class(nbytes)
        if size > self.cap:
            return None
        site = caller_site()
        deadline = time.monotonic() + timeout
        doomed: list[_Entry] = []
        with self._critical():
            waited = False
            while True:
                self._check_open()
                entry = self._take_free(size)
                if entry is not None:
                    self._counts["reused"] += 1
                    return self._lease(entry, nbytes, site)
                if self._make_room(size, doomed):
                    self._bytes += size  # reserved while the segment is created unlocked
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                if not waited:
                    self._counts["waits"] += 1
                    waited = True
                self._wait_for(remaining)
        _discard(doomed)
        return self._lease_new(size, nbytes, site)

    def _lease_new(self, size: int, nbytes: int, site: str) -> Slot:
        try:
            segment = self._create(size)
        except BaseException:
            with self._critical():
                self._bytes -= size
                self._cond.notify_all()
            raise
        with self._critical():
            if self._closed:
                _segment.unlink(segment.name)
                self._check_open()
            entry = self._entries[segment.name] = _Entry(segment)
            self._counts["created"] += 1
            return self._lease(entry, nbytes, site)

    def _create(self, size: int) -> Segment:
        while True:
            try:
                segment = _segment.create(new_name(self.owner), size)
            except FileExistsError:  # left by an earlier process with our pid: take the next
                continue
            _cache.register(segment)
            return segment

    def _take_free(self, size: int) -> _Entry | None:
        for name in reversed(self._free):  # most recently used first: its pages are warm
            entry = self._free[name]
            if entry.segment.size == size:
                del self._free[name]
                return entry
        return None

    def _make_room(self, size: int, doomed: list[_Entry]) -> bool:
        """Evict free slots until ``size`` more bytes fit the cap; False if they cannot."""
        excess = self._bytes + size - self.cap
        if excess <= 0:
            return True
        if sum(entry.segment.size for entry in self._free.values()) < excess:
            return False  # evicting now would only lose warm slots; wait for releases instead
        while excess > 0:
            _, entry = self._free.popitem(last=False)
            self._forget(entry)
            self._counts["evicted"] += 1
            doomed.append(entry)
            excess -= entry.segment.size
        return True

    def _lease(self, entry: _Entry, nbytes: int, site: str) -> Slot:
        entry.leased = True
        entry.generation += 1
        entry.nbytes = nbytes
        entry.site = site
        entry.since = time.monotonic()
        return Slot(self, entry, nbytes)

    def _exhausted(self, nbytes: int, timeout: float) -> SharedMemoryExhausted:
        size = size_class(nbytes)
        if size > self.cap:
            return SharedMemoryExhausted(
                f"{nbytes / _MIB:.1f} MiB needs a {size / _MIB:.1f} MiB slot, more than the "
                f"whole shared-memory cap of {self.cap / _MIB:.1f} MiB: raise the cap "
                "(SlotPool(cap=...)) or split the data"
            )
        stats = self.stats()
        return SharedMemoryExhausted(
            f"no room for a {size / _MIB:.1f} MiB slot: {stats.in_use_bytes / _MIB:.1f} of "
            f"{self.cap / _MIB:.1f} MiB are held by {stats.in_use} slots and none was released "
            f"within {timeout:g} s. Drop or release arrays you no longer need "
            "(memwise.shared.leaks() shows where they were allocated), or raise the cap"
        )

    # -- releasing -------------------------------------------------------------------------

    def _release(self, slot: Slot) -> None:
        with self._cond:
            if self._busy:  # a finalizer run by the GC inside one of our own critical sections
                self._pending.append(slot)
                return
            with self._critical():
                self._apply_release(slot)

    def _apply_release(self, slot: Slot) -> None:
        if self._closed:
            return
        entry = slot._entry
        if not entry.leased or entry.generation != slot._generation:
            raise ValueError(
                f"{slot!r} was already released or given away; release each slot once"
            )
        entry.leased = False
        self._settle(entry)

    def _settle(self, entry: _Entry) -> None:
        if not entry.leased and not entry.borrows:
            self._free[entry.segment.name] = entry
            self._cond.notify_all()

    # -- ownership across processes ------------------------------------------------------------

    def lend(self, handle: SlotHandle, to: int) -> SlotHandle:
        """Record that process ``to`` borrows this slot (it must be held here, leased or lent).

        The slot stays in use until ``to`` returns it (:meth:`returned`) or dies (:meth:`reclaim`).
        """
        with self._critical():
            entry = self._entries.get(handle.name)
            if entry is None or not (entry.leased or entry.borrows):
                raise ValueError(f"{handle.name} is not held in this pool; lend slots you hold")
            entry.borrows[to] = entry.borrows.get(to, 0) + 1
        return handle

    def returned(self, handles: Iterable[SlotHandle], by: int) -> None:
        """Process ``by`` dropped its views of these borrowed slots."""
        with self._critical():
            if self._closed:
                return
            for handle in handles:
                entry = self._entries.get(handle.name)
                count = entry.borrows.get(by, 0) if entry is not None else 0
                if entry is None or not count:
                    raise ValueError(f"process {by} returned {handle.name}, which it did not borrow")
                if count == 1:
                    del entry.borrows[by]
                    self._settle(entry)
                else:
                    entry.borrows[by] = count - 1

    def give(self, slot: Slot, to: int | None = None) -> SlotHandle:
        """Hand the slot's segment to another process, which must :meth:`adopt` the handle.

        The segment leaves this pool (and its cap) but stays mapped in this process's attach cache
        in case it comes back. With ``to``, this pool remembers the gift and unlinks it if that
        process dies first (:meth:`reclaim`); a worker giving results to its parent passes None.
        """
        with self._critical():
            entry = slot._entry
            if self._closed or not entry.leased or entry.generation != slot._generation:
                raise ValueError(f"{slot!r} is not held; only a held slot can be given away")
            if entry.borrows:
                raise ValueError(
                    f"{slot!r} is lent to processes {sorted(entry.borrows)}; it can be given "
                    "away once they returned it"
                )
            entry.leased = False
            entry.generation += 1
            self._forget(entry)
            if to is not None:
                self._given.setdefault(to, set()).add(entry.segment.name)
            self._cond.notify_all()
        _cache.keep(entry.segment)
        return slot.handle

    def adopt(self, handle: SlotHandle) -> Slot:
        """Take ownership of a segment another process gave away; returns it leased.

        Adopting may take the pool past its cap (the data exists already); allocations then wait.
        To stock a free slot (a gift for later results), adopt it and release the Slot.
        """
        if handle.offset:
            raise ValueError(f"{handle} is part of a segment; only whole segments can be adopted")
        site = caller_site()
        segment = _cache.get(handle.name, handle.size)
        with self._critical():
            self._check_open()
            if handle.name in self._entries:
                raise ValueError(f"{handle.name} already belongs to this pool")
            for names in self._given.values():
                names.discard(handle.name)
            entry = self._entries[handle.name] = _Entry(segment)
            self._bytes += segment.size
            self._counts["adopted"] += 1
            return self._lease(entry, handle.nbytes, site)

    def reclaim(self, pid: int) -> list[str]:
        """Process ``pid`` has exited (however): end its loans and unlink what it left behind.

        Call it after reading every message the process sent (handles in them are adopted
        first). Its borrows end; segments given to it and segments it created for this pool's
        owner but never handed over are unlinked (the latter by listing /dev/shm: Linux only).
        Returns the names unlinked.
        """
        with self._critical():
            for entry in list(self._entries.values()):
                if entry.borrows.pop(pid, None):
                    self._settle(entry)
            given = self._given.pop(pid, set())
            known = set(self._entries).union(*self._given.values())
        for name in given:
            _segment.unlink(name)
        swept = sweep_created_by(self.owner, pid, keep=known)
        _cache.forget([*given, *swept])
        return sorted([*given, *swept])

    # -- housekeeping ----------------------------------------------------------------------

    def trim(self) -> int:
        """Unlink every free slot (their memory returns to the OS); returns the bytes freed."""
        with self._critical():
            doomed = list(self._free.values())
            self._free.clear()
            for entry in doomed:
                self._forget(entry)
        _discard(doomed)
        return sum(entry.segment.size for entry in doomed)

    def close(self) -> None:
        """Unlink every segment this pool owns or gave away; further allocations fail.

        Arrays still alive keep working (their mapping stays until they are gone); releasing
        them afterwards does nothing.
        """
        with self._critical():
            if self._closed:
                return
            self._closed = True
            names = [*self._entries, *(name for names in self._given.values() for name in names)]
            self._entries.clear()
            self._free.clear()
            self._given.clear()
            self._bytes = 0
            self._cond.notify_all()
        self._finalizer.detach()
        for name in names:
            _segment.unlink(name)
        _cache.forget(names)

    def __enter__(self) -> SlotPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def stats(self) -> SlotStats:
        with self._critical():
            classes: dict[int, list[int]] = {}
            in_use = in_use_bytes = 0
            for name, entry in self._entries.items():
                size = entry.segment.size
                counts = classes.setdefault(size, [0, 0])
                counts[0] += 1
                if name not in self._free:
                    counts[1] += 1
                    in_use += 1
                    in_use_bytes += size
            return SlotStats(
                slots=len(self._entries),
                bytes=sum(entry.segment.size for entry in self._entries.values()),
                in_use=in_use,
                in_use_bytes=in_use_bytes,
                cap=self.cap,
                classes=tuple(SizeClassStats(size, *classes[size]) for size in sorted(classes)),
                **self._counts,
            )

    def leaks(self) -> list[SlotLeak]:
        """Slots held right now, oldest first, with where they were allocated or adopted."""
        now = time.monotonic()
        with self._critical():
            held = [entry for name, entry in self._entries.items() if name not in self._free]
            return [
                SlotLeak(
                    name=entry.segment.name,
                    size=entry.segment.size,
                    nbytes=entry.nbytes,
                    site=entry.site,
                    age=now - entry.since,
                    borrowers=tuple(sorted(entry.borrows)),
                )
                for entry in sorted(held, key=lambda entry: entry.since)
            ]

    def __repr__(self) -> str:
        return f"SlotPool(owner={self.owner.pid}, cap={self.cap}, slots={len(self._entries)})"

    # -- locking ---------------------------------------------------------------------------

    @contextmanager
    def _critical(self) -> Iterator[None]:
        with self._cond:
            self._busy = True
            try:
                yield
            finally:
                while self._pending:  # releases queued by finalizers that ran in here
                    self._apply_queued(self._pending.popleft())
                self._busy = False

    def _apply_queued(self, slot: Slot) -> None:
        # Nobody is left to hear an error from a queued finalizer: drop it as the finalizer
        # thread would have (weakref prints and ignores it).
        with suppress(ValueError):
            self._apply_release(slot)

    def _wait_for(self, seconds: float) -> None:
        self._busy = False
        self._cond.wait(min(seconds, threading.TIMEOUT_MAX))
        self._busy = True

    def _check_open(self) -> None:
        if self._closed:
            raise SharedMemoryError("this SlotPool is closed; create a new one")

    def _forget(self, entry: _Entry) -> None:
        del self._entries[entry.segment.name]
        self._bytes -= entry.segment.size


def _discard(entries: list[_Entry]) -> None:
    names = [entry.segment.name for entry in entries]
    for name in names:
        _segment.unlink(name)
    _cache.forget(names)
