"""Shared-memory slots: arrays that cross process boundaries without copies.

Importing this package does not import numpy; numpy loads when the first array is made.

Arrays
------
``empty(shape, dtype)``, ``zeros``, ``copy(array)`` return ndarrays living in *slots*: pooled,
pre-faulted POSIX shared-memory segments in size classes, under a byte cap. Arrays you create
are writable; arrays received from another process are read-only unless lent for writing. A slot
returns to its pool when the last array viewing it is garbage collected, or on ``release(array)``.
A mapping is never closed under a live array: it is unmapped when the last reference to it goes.
``stats()``, ``leaks()`` and ``trim()`` report on and shrink this process's default pool;
``owned_segments()`` lists what this process still has in /dev/shm.

Lifetime protocol (what the pool transport builds on)
-----------------------------------------------------
Every segment is *owned* by exactly one :class:`SlotPool` at a time, and named after the pool's
owner process (pid + start-time tag) and the process that created it (see ``_names``). Other
processes only ever *borrow* a segment or *receive* it:

1. **Lend (parent -> worker arguments).** The parent writes into ``pool.allocate(n)`` (or finds
   an array already in a slot with ``find_slot``), calls ``pool.lend(handle, to=pid)`` and sends
   the picklable :class:`SlotHandle`. The worker calls ``borrow(handle)`` (a read-only uint8
   array, attached once and cached per process) and rebuilds its objects on it. When the worker
   drops its last view, the handle appears in ``take_returns()``; the worker piggybacks those on
   its next message and the parent calls ``pool.returned(handles, by=pid)``. The slot becomes
   free once its local lease is released and every borrower returned it.
2. **Give (worker -> parent results).** The worker's pool is ``SlotPool(owner=parent_owner,
   sweep=False)`` (installed with ``set_default_pool``), so its segments carry the parent's name.
   It writes a result into ``allocate(n)``, sends ``pool.give(slot)``; the parent calls
   ``pool.adopt(handle)`` and ``slot_array(slot)`` to get a read-only array that returns the slot
   to the *parent's* pool when collected. Ownership moved; nothing flows back.
3. **Restock (parent -> worker spare slots).** So that workers need not create (and page-fault)
   fresh segments for every result, the parent may give free slots to a worker:
   ``pool.give(pool.allocate(n), to=pid)``; the worker stocks them with
   ``pool.adopt(handle).release()``. Mappings stay cached on both sides, so a segment travelling
   back and forth is mapped once per process.
4. **A worker exits or dies.** After reading everything it sent, the parent calls
   ``pool.reclaim(pid)``: its loans end, gifts it still held and segments it created but never
   handed over are unlinked (found by listing /dev/shm). Nothing leaks.
5. **The parent dies (SIGKILL).** Workers exit with it; the segments, all named after the dead
   owner, are unlinked by ``sweep_orphans()``, which every new pool runs when it starts; a worker
   or forkserver that sees its parent go calls ``sweep_when_dead(owner_of(parent))``.
   A clean exit unlinks everything at interpreter shutdown (and ``SlotPool.close``).

/dev/shm listing is Linux-only: on macOS sweeping and ``reclaim``'s search for a dead creator's
segments do nothing (best effort); everything else works.
"""

from __future__ import annotations

from memwise.shared._arrays import (
    copy,
    default_pool,
    empty,
    leaks,
    set_default_pool,
    stats,
    trim,
    zeros,
)
from memwise.shared._cache import attach
from memwise.shared._names import Owner, current_owner, owned_segments, owner_of
from memwise.shared._pool import SlotPool
from memwise.shared._report import SizeClassStats, SlotLeak, SlotStats
from memwise.shared._slot import Slot, SlotHandle
from memwise.shared._sweep import sweep_orphans, sweep_when_dead
from memwise.shared._views import (
    borrow,
    find_slot,
    hand_over,
    release,
    slot_array,
    take_returns,
)

__all__ = [
    "Owner",
    "SizeClassStats",
    "Slot",
    "SlotHandle",
    "SlotLeak",
    "SlotPool",
    "SlotStats",
    "attach",
    "borrow",
    "copy",
    "current_owner",
    "default_pool",
    "empty",
    "find_slot",
    "hand_over",
    "leaks",
    "owned_segments",
    "owner_of",
    "release",
    "set_default_pool",
    "slot_array",
    "stats",
    "sweep_orphans",
    "sweep_when_dead",
    "take_returns",
    "trim",
    "zeros",
]
