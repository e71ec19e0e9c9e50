"""SlotPool: pooled, pre-faulted shared-memory slots under a byte cap, and who holds each one.

A pool owns segments. Each is free (kept mapped for the next request of its size class), leased
to a local :class:`Slot`, and/or lent to other processes (borrowers). It goes back to the free
list when the lease is released and every borrower has returned it. Ownership moves between
processes with :meth:`SlotPool.give` and :meth:`SlotPool.adopt`. The protocol is described in the
package docstring.

Releases also come from ``weakref.finalize`` callbacks, which the garbage collector may run inside
a pool method: the pool's :class:`Guard` defers those until the method is done.
"""

from __future__ import annotations

import gc
import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Iterable
from typing import Literal

from memwise.errors import ClosedError, SharedMemoryExhausted
from memwise.memory import parse_size
from memwise.shared import _cache, _segment
from memwise.shared._guard import Guard
from memwise.shared._names import Owner, current_owner, new_name
from memwise.shared._report import SlotLeak, SlotStats, caller_site, held_slots, pool_stats
from memwise.shared._segment import Segment
from memwise.shared._sizes import size_class
from memwise.shared._slot import Entry, Slot, SlotHandle
from memwise.shared._sweep import sweep_created_by, sweep_orphans

_MIB = 1024 * 1024
# Free slots are kept warm up to this multiple of the bytes in use at the recent peak...
FREE_FACTOR = 2
# ...where "recent" means the last this many seconds...
PEAK_WINDOW = 5.0
# ...and each is unlinked after this many seconds unused.
DEFAULT_IDLE = 10.0


def default_cap() -> int:
    """Half of /dev/shm, or half of physical memory where there is no /dev/shm to measure."""
    total = _segment.shm_total_bytes()
    if total is None:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return total // 2


def _unlink_all(pid: int, entries: dict[str, Entry], given: dict[int, set[str]]) -> None:
    # A forked child inherits the pool object but not the right to remove its segments.
    if os.getpid() != pid:
        return
    for name in [*entries, *(name for names in given.values() for name in names)]:
        _segment.unlink(name)


class SlotPool:
    """Shared-memory slots in size classes, reused, with a cap on the bytes the pool owns.

    ``cap`` (default: :func:`default_cap`) bounds the segments the pool owns, free or in use;
    when a request does not fit, free slots of other classes are unlinked first (least recently
    used), then the garbage collector runs (arrays in reference cycles hold slots), then the
    caller waits ``wait`` seconds (``math.inf``: forever) for a release before
    :class:`SharedMemoryExhausted`. ``owner`` names the process answering for the segments: a
    worker creating result slots for its parent passes the parent's ``pool.owner``. Starting a
    pool sweeps orphans of dead owners unless ``sweep=False``.

    Free slots are what makes reuse cheap, but they hold memory nobody uses, so they are
    bounded: at most ``keep_free`` bytes (default: ``FREE_FACTOR`` times the bytes in use at
    the peak of the last one or two ``PEAK_WINDOW`` seconds), and each is unlinked once it
    has stayed free for ``idle`` seconds (None: never), by a timer: a long-running program
    gets its shared memory back without calling anything.
    """

    def __init__(
        self,
        cap: int | None = None,
        *,
        wait: float = 30.0,
        owner: Owner | None = None,
        sweep: bool = True,
        keep_free: int | str | None = None,
        idle: float | None = DEFAULT_IDLE,
    ) -> None:
        self.owner = owner if owner is not None else current_owner()
        self.cap = cap if cap is not None else default_cap()
        self.wait = wait
        self.keep_free = None if keep_free is None else parse_size(keep_free)
        self.idle = idle
        self._peak = self._previous_peak = 0  # bytes in use at the peak of a window
        self._peak_since = time.monotonic()
        self._expiry: threading.Timer | None = None
        self._guard = Guard()
        self._entries: dict[str, Entry] = {}
        self._free: OrderedDict[str, Entry] = OrderedDict()  # least recently released first
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
        doomed: list[Entry] = []
        with self._guard:
            got = self._reuse_or_reserve(size, nbytes, site, doomed)
        if got is None and timeout > 0:
            # Arrays caught in reference cycles hold slots until the collector runs: run it
            # before waiting for other threads. Never under the lock: it runs finalizers.
            gc.collect()
            with self._guard:
                got = self._reuse_or_reserve(size, nbytes, site, doomed)
                if got is None:
                    self._counts["waits"] += 1
                while got is None and (remaining := deadline - time.monotonic()) > 0:
                    self._guard.wait(remaining)
                    got = self._reuse_or_reserve(size, nbytes, site, doomed)
        if got is None or isinstance(got, Slot):
            return got
        _discard(doomed)
        return self._lease_new(size, nbytes, site)

    def take_free(self, nbytes: int) -> Slot | None:
        """A free slot that fits ``nbytes`` if one is ready, else None: never creates or waits.

        For restocking workers with warm slots, where creating one would only move the cost.
        """
        with self._guard:
            self._check_open()
            entry = self._take_free(size_class(nbytes))
            if entry is None:
                return None
            self._counts["reused"] += 1
            return self._lease(entry, nbytes, caller_site())

    def _reuse_or_reserve(
        self, size: int, nbytes: int, site: str, doomed: list[Entry]
    ) -> Slot | Literal[True] | None:
        """A free slot of the class, True once ``size`` is reserved for a new one, None if full.

        Free slots of other classes evicted to make room are added to ``doomed``.
        """
        self._check_open()
        entry = self._take_free(size)
        if entry is not None:
            self._counts["reused"] += 1
            return self._lease(entry, nbytes, site)
        if self._make_room(size, doomed):
            self._bytes += size  # reserved while the segment is created unlocked
            return True
        return None

    def _lease_new(self, size: int, nbytes: int, site: str) -> Slot:
        try:
            segment = self._create(size)
        except BaseException:
            with self._guard:
                self._bytes -= size
                self._guard.notify_all()
            raise
        with self._guard:
            if self._closed:
                _segment.unlink(segment.name)
                self._check_open()
            entry = self._entries[segment.name] = Entry(segment)
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

    def _take_free(self, size: int) -> Entry | None:
        for name in reversed(self._free):  # most recently used first: its pages are warm
            entry = self._free[name]
            if entry.segment.size == size:
                del self._free[name]
                return entry
        return None

    def _make_room(self, size: int, doomed: list[Entry]) -> bool:
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

    def _lease(self, entry: Entry, nbytes: int, site: str) -> Slot:
        entry.leased = True
        entry.generation += 1
        entry.nbytes = nbytes
        entry.site = site
        entry.since = time.monotonic()
        self._recent_peak(entry.since)
        return Slot(self, entry, nbytes)

    def _recent_peak(self, now: float) -> int:
        """The most bytes in use in this window and the one before, counting now."""
        in_use = self._bytes - self._free_bytes()
        if now - self._peak_since > PEAK_WINDOW:
            self._previous_peak, self._peak, self._peak_since = self._peak, in_use, now
        else:
            self._peak = max(self._peak, in_use)
        return max(self._peak, self._previous_peak)

    def _free_bytes(self) -> int:
        return sum(entry.segment.size for entry in self._free.values())

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
        self._guard.run_or_defer(self._apply_release, slot)

    def _apply_release(self, slot: Slot) -> None:
        if self._closed:
            return
        entry = slot._entry
        if not entry.leased or entry.generation != slot._generation:
            raise ValueError(f"{slot!r} was already released or given away; release each slot once")
        entry.leased = False
        self._settle(entry)

    def _settle(self, entry: Entry) -> None:
        if not entry.leased and not entry.borrows:
            entry.freed = time.monotonic()
            self._free[entry.segment.name] = entry
            self._guard.notify_all()
            self._bound_free(entry.freed)

    def _bound_free(self, now: float) -> None:
        """Unlink the least recently freed slots beyond the bound; time the rest out."""
        limit = self.keep_free
        if limit is None:
            limit = FREE_FACTOR * self._recent_peak(now)
        excess = self._free_bytes() - limit
        doomed = []
        while excess > 0 and self._free:
            _, entry = self._free.popitem(last=False)
            self._forget(entry)
            self._counts["evicted"] += 1
            doomed.append(entry)
            excess -= entry.segment.size
        _discard(doomed)  # under the lock, but only when over the bound: rare and cheap
        if self._free and self.idle is not None and self._expiry is None:
            oldest = next(iter(self._free.values())).freed
            self._expiry = threading.Timer(
                max(0.0, oldest + self.idle - now), _expire, (weakref.ref(self),)
            )
            self._expiry.daemon = True
            try:
                self._expiry.start()
            except RuntimeError:  # interpreter shutdown: everything is unlinked at exit anyway
                self._expiry = None

    def expire_idle(self) -> int:
        """Unlink free slots unused for ``idle`` seconds; returns the bytes freed.

        A timer calls it while free slots remain; there is no need to call it yourself.
        """
        with self._guard:
            self._expiry = None
            if self._closed or self.idle is None:
                return 0
            now = time.monotonic()
            doomed = []
            while self._free:
                name, entry = next(iter(self._free.items()))
                if now - entry.freed < self.idle:
                    break
                del self._free[name]
                self._forget(entry)
                self._counts["evicted"] += 1
                doomed.append(entry)
            self._bound_free(now)  # re-arms the timer for the slots left
        _discard(doomed)
        return sum(entry.segment.size for entry in doomed)

    # -- ownership across processes ------------------------------------------------------------

    def lend(self, handle: SlotHandle, to: int) -> SlotHandle:
        """Record that process ``to`` borrows this slot (it must be held here, leased or lent).

        The slot stays in use until ``to`` returns it (:meth:`returned`) or dies (:meth:`reclaim`).
        """
        with self._guard:
            entry = self._entries.get(handle.name)
            if entry is None or not (entry.leased or entry.borrows):
                raise ValueError(f"{handle.name} is not held in this pool; lend slots you hold")
            entry.borrows[to] = entry.borrows.get(to, 0) + 1
        return handle

    def returned(self, handles: Iterable[SlotHandle], by: int) -> None:
        """Process ``by`` dropped its views of these borrowed slots."""
        with self._guard:
            if self._closed:
                return
            for handle in handles:
                entry = self._entries.get(handle.name)
                count = entry.borrows.get(by, 0) if entry is not None else 0
                if entry is None or not count:
                    raise ValueError(
                        f"process {by} returned {handle.name}, which it did not borrow"
                    )
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
        with self._guard:
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
            self._guard.notify_all()
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
        with self._guard:
            self._check_open()
            if handle.name in self._entries:
                raise ValueError(f"{handle.name} already belongs to this pool")
            for names in self._given.values():
                names.discard(handle.name)
            entry = self._entries[handle.name] = Entry(segment)
            self._bytes += segment.size
            self._counts["adopted"] += 1
            return self._lease(entry, handle.nbytes, site)

    def reclaim(self, pid: int) -> list[str]:
        """Process ``pid`` has exited (however): end its loans and unlink what it left behind.

        Call it after reading every message the process sent (handles in them are adopted
        first) and before starting a replacement (which could get the same pid). Its borrows
        end; segments given to it and segments it created for this pool's owner but never handed
        over are unlinked (the latter found by listing /dev/shm: Linux only). Returns the names
        unlinked.
        """
        with self._guard:
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
        with self._guard:
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
        with self._guard:
            if self._closed:
                return
            self._closed = True
            names = [*self._entries, *(name for names in self._given.values() for name in names)]
            self._entries.clear()
            self._free.clear()
            self._given.clear()
            self._bytes = 0
            self._guard.notify_all()
        self._finalizer.detach()
        for name in names:
            _segment.unlink(name)
        _cache.forget(names)

    def __enter__(self) -> SlotPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def stats(self) -> SlotStats:
        with self._guard:
            return pool_stats(self._entries.values(), self._free, self.cap, self._counts)

    def leaks(self) -> list[SlotLeak]:
        """Slots held right now, oldest first, with where they were allocated or adopted."""
        with self._guard:
            return held_slots(self._entries.values(), self._free)

    def __repr__(self) -> str:
        return f"SlotPool(owner={self.owner.pid}, cap={self.cap}, slots={len(self._entries)})"

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("this SlotPool is closed; create a new one")

    def _forget(self, entry: Entry) -> None:
        del self._entries[entry.segment.name]
        self._bytes -= entry.segment.size


def _expire(pool_ref: weakref.ref[SlotPool]) -> None:
    pool = pool_ref()
    if pool is not None:
        pool.expire_idle()


def _discard(entries: list[Entry]) -> None:
    names = [entry.segment.name for entry in entries]
    for name in names:
        _segment.unlink(name)
    _cache.forget(names)
