"""Per-process cache of segment mappings.

Mapping a segment costs a system call plus building its page tables; a worker that receives the
same pooled slots task after task should pay that once. Two tables, both keyed by name:

- ``_live`` (weak): every segment mapped in this process that something still references (a pool's
  slot, a view); looking a name up here never maps twice.
- ``_recent`` (strong, LRU, bounded): segments attached for borrowing or handed to another process,
  kept mapped so that their next use is free. The bound caps the memory a process can pin after
  the owner has unlinked a name; :func:`forget` drops names known to be dead right away.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterable
from typing import TYPE_CHECKING

from memwise.shared import _segment
from memwise.shared._segment import Segment

if TYPE_CHECKING:
    from memwise.shared._slot import SlotHandle

MAX_ENTRIES = 64
MAX_BYTES = 1 << 30

_lock = threading.Lock()
_live: weakref.WeakValueDictionary[str, Segment] = weakref.WeakValueDictionary()
_recent: OrderedDict[str, Segment] = OrderedDict()


def _keep_recent(segment: Segment) -> None:
    _recent[segment.name] = segment
    _recent.move_to_end(segment.name)
    total = sum(kept.size for kept in _recent.values())
    while len(_recent) > MAX_ENTRIES or (total > MAX_BYTES and len(_recent) > 1):
        _, dropped = _recent.popitem(last=False)
        total -= dropped.size


def register(segment: Segment) -> None:
    """Make a segment this process created findable by name."""
    with _lock:
        _live[segment.name] = segment


def keep(segment: Segment) -> None:
    """Keep a segment mapped after its holder let go of it (it may come back soon)."""
    with _lock:
        _live[segment.name] = segment
        _keep_recent(segment)


def get(name: str, size: int) -> Segment:
    """The mapping of ``name`` in this process, attaching it on first use."""
    with _lock:
        segment = _live.get(name)
        if segment is not None:
            _keep_recent(segment)
            return segment
    segment = _segment.attach(name, size)  # outside the lock: populating can take milliseconds
    with _lock:
        segment = _live.setdefault(name, segment)
        _keep_recent(segment)
        return segment


def attach(handle: SlotHandle, *, writable: bool = False) -> memoryview:
    """The bytes ``handle`` names, mapped in this process (cached), read-only unless asked.

    Untracked: nothing tells the owner when you are done. Use ``borrow`` for a view whose
    lifetime the owner hears about.
    """
    segment = get(handle.name, handle.size)
    view = segment.view[handle.offset : handle.offset + handle.nbytes]
    return view if writable else view.toreadonly()


def forget(names: Iterable[str]) -> None:
    """Stop caching these names (their owner unlinked them); live views stay valid."""
    with _lock:
        for name in names:
            _recent.pop(name, None)
            _live.pop(name, None)


def _reset_after_fork() -> None:
    global _lock
    _lock = threading.Lock()  # another thread may have held it at fork time


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)
