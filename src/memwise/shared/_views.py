"""ndarrays over slots whose lifetime holds the slot.

Every array handed out over a slot is built on a *keeper*: a flat uint8 ndarray over the slot's
bytes, made with ``np.frombuffer`` from a memoryview. numpy collapses view chains only down to the
first array whose base is not an ndarray, so every view, reshape, slice or pickle-rebuilt array
derived from the keeper references the keeper itself, never just the mmap underneath. A
``weakref.finalize`` on the keeper therefore fires exactly when the last array derived from it
is gone, and gives the slot back (owned slot) or queues a return notice (borrowed slot).

Read-only keepers are built from read-only memoryviews, so no derived array can flip its
``writeable`` flag back on.
"""

from __future__ import annotations

import os
import pickle
import weakref
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from dataclasses import replace
from typing import TYPE_CHECKING, Any, NamedTuple

from memwise.shared import _cache

if TYPE_CHECKING:
    import numpy as np

    from memwise.shared._pool import SlotPool
    from memwise.shared._slot import Slot, SlotHandle

_MAX_BASE_CHAIN = 64


class _Binding(NamedTuple):
    keeper: weakref.ref[Any]
    start: int  # address of the segment's first byte in this process
    handle: SlotHandle
    slot: Slot | None  # None for a borrowed view: the slot belongs to another process
    finalizer: weakref.finalize


_bindings: dict[int, _Binding] = {}
_returns: deque[SlotHandle] = deque()


def _address(array: np.ndarray) -> int:
    return int(array.__array_interface__["data"][0])


def _unbind(key: int, on_dead: Callable[[Any], None], arg: object) -> None:
    _bindings.pop(key, None)
    on_dead(arg)


def _bind(
    view: memoryview,
    handle: SlotHandle,
    slot: Slot | None,
    on_dead: Callable[[Any], None],
    arg: object,
) -> np.ndarray:
    import numpy as np

    keeper = np.frombuffer(view, dtype=np.uint8)
    key = id(keeper)
    finalizer = weakref.finalize(keeper, _unbind, key, on_dead, arg)
    finalizer.atexit = False  # at exit the pools unlink everything at once
    start = _address(keeper) - handle.offset
    _bindings[key] = _Binding(weakref.ref(keeper), start, handle, slot, finalizer)
    return keeper


def slot_array(slot: Slot, *, writable: bool = False) -> np.ndarray:
    """A flat uint8 array over the slot that releases it when it (and all it made) is gone.

    This is how a slot received by adoption becomes data: pass the array as an out-of-band buffer
    to ``pickle.loads(..., buffers=...)``, or view it with ``np.ndarray(shape, dtype, buffer=it)``.
    """
    view = slot.buf if writable else slot.buf.toreadonly()
    return _bind(view, slot.handle, slot, _release_slot, slot)


def _release_slot(slot: Slot) -> None:
    slot.release()


def borrow(handle: SlotHandle, *, writable: bool = False) -> np.ndarray:
    """A flat uint8 array over a slot lent by another process (attached once, then cached).

    When it and every array derived from it are gone (or on :func:`release`), the handle is
    queued for :func:`take_returns`, so the transport can tell the owner. Writable only if the
    owner lent the slot for writing (an output buffer filled in place).
    """
    segment = _cache.get(handle.name, handle.size)
    view = segment.view[handle.offset : handle.offset + handle.nbytes]
    return _bind(view if writable else view.toreadonly(), handle, None, _returns.append, handle)


def take_returns() -> list[SlotHandle]:
    """Handles of borrowed slots this process no longer uses, to send back to their owners."""
    returns = []
    with suppress(IndexError):  # emptied, possibly by another thread taking returns too
        while True:
            returns.append(_returns.popleft())
    return returns


def _find(obj: object) -> _Binding | None:
    import numpy as np

    for _ in range(_MAX_BASE_CHAIN):
        binding = _bindings.get(id(obj))
        if binding is not None and binding.keeper() is obj:
            return binding
        if isinstance(obj, np.ndarray):
            obj = obj.base
        elif isinstance(obj, memoryview):
            obj = obj.obj
        elif isinstance(obj, pickle.PickleBuffer):
            with memoryview(obj) as view:
                obj = view.obj
        else:
            return None
    return None


def release(obj: object) -> None:
    """Give back the slot under ``obj`` now instead of when it is garbage collected.

    ``obj`` is an array (or memoryview, PickleBuffer) from ``empty``/``zeros``/``copy``/``borrow``
    or any view of one. Every array sharing the slot must no longer be used: the slot's next
    holder will overwrite them. Raises ValueError if ``obj`` is not slot-backed or was released.
    """
    binding = _find(obj)
    if binding is None:
        raise ValueError(
            "this object is not backed by a memwise slot, or its slot was already released"
        )
    binding.finalizer()


def find_slot(obj: object) -> tuple[Slot, SlotHandle] | None:
    """The slot ``obj``'s bytes live in (owned by a pool of this process) and a handle to them.

    None if ``obj`` is not in an owned slot or not contiguous. The transport uses it to send an
    array that already lives in a slot as a handle (``slot.pool.lend(handle, to=pid)``).
    """
    import numpy as np

    binding = _find(obj)
    if binding is None or binding.slot is None:
        return None
    if not isinstance(obj, np.ndarray):  # a memoryview or PickleBuffer: view its bytes
        obj = np.asarray(memoryview(obj))  # type: ignore[arg-type]
    if not (obj.flags.c_contiguous or obj.flags.f_contiguous):
        return None
    offset = _address(obj) - binding.start if obj.nbytes else 0
    return binding.slot, replace(binding.handle, nbytes=obj.nbytes, offset=offset)


def hand_over(obj: object, pool: SlotPool) -> Slot | None:
    """The slot of ``pool`` that ``obj`` covers exactly, detached from its arrays, or None.

    For a task's result built in a slot: the transport gives that slot away instead of
    copying it. The arrays over it stay readable in this process, but the slot is no longer
    theirs: it is not released when they are collected, and they must not be used any more.
    """
    binding = _find(obj)
    if binding is None or binding.slot is None or binding.slot.pool is not pool:
        return None
    found = find_slot(obj)
    if found is None or found[1].offset or found[1].nbytes != binding.slot.handle.nbytes:
        return None
    binding.finalizer.detach()
    _bindings.pop(id(binding.keeper()), None)
    return binding.slot


def _reset_after_fork() -> None:
    # Arrays inherited by a forked child belong to the parent's pools and loans.
    _bindings.clear()
    _returns.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)
