"""The user-facing side: arrays in slots of this process's default pool."""

from __future__ import annotations

import math
import os
import threading
from typing import TYPE_CHECKING, Any, Literal

from memwise.errors import SerializationError
from memwise.shared._pool import SlotPool
from memwise.shared._report import SlotLeak, SlotStats
from memwise.shared._views import slot_array

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import ArrayLike, DTypeLike

    from memwise.shared._slot import Slot

_Order = Literal["C", "F"]
_default: SlotPool | None = None
_default_lock = threading.Lock()


def default_pool() -> SlotPool:
    """This process's pool, created on first use (sweeping orphans as it starts)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = SlotPool()
        return _default


def set_default_pool(pool: SlotPool) -> SlotPool | None:
    """Make ``pool`` the default (a worker passes one with its parent's owner); returns the old.

    The old pool is not closed: arrays it handed out may still be alive. Close it when done.
    """
    global _default
    with _default_lock:
        previous, _default = _default, pool
        return previous


def _shareable(dtype: DTypeLike) -> np.dtype[Any]:
    import numpy as np

    checked = np.dtype(dtype)
    if checked.hasobject:
        raise SerializationError(
            f"dtype {checked} holds Python object references, which cannot live in shared "
            "memory; convert the data to a plain numeric, string or structured dtype"
        )
    return checked


def _shape(shape: int | tuple[int, ...]) -> tuple[int, ...]:
    return (shape,) if isinstance(shape, int) else tuple(shape)


def _allocate(shape: tuple[int, ...], dtype: np.dtype[Any], pool: SlotPool | None) -> Slot:
    slots = pool if pool is not None else default_pool()
    return slots.allocate(math.prod(shape) * dtype.itemsize)


def _wrap(
    slot: Slot, shape: tuple[int, ...], dtype: np.dtype[Any], order: _Order, writable: bool
) -> np.ndarray:
    import numpy as np

    return np.ndarray(shape, dtype, buffer=slot_array(slot, writable=writable), order=order)


def _scratch(slot: Slot, shape: tuple[int, ...], dtype: np.dtype[Any], order: _Order) -> np.ndarray:
    """A writable, untracked view to fill a slot before it is bound (possibly read-only)."""
    import numpy as np

    return np.ndarray(shape, dtype, buffer=slot.buf, order=order)


def empty(
    shape: int | tuple[int, ...],
    dtype: DTypeLike = float,
    *,
    order: _Order = "C",
    writable: bool = True,
    pool: SlotPool | None = None,
) -> np.ndarray:
    """An uninitialised array in a slot (contents are whatever the slot's last user left).

    The slot returns to its pool when the array and every view of it are gone, or on
    :func:`release`. Writable by default: you made it to fill it.
    """
    checked, dims = _shareable(dtype), _shape(shape)
    return _wrap(_allocate(dims, checked, pool), dims, checked, order, writable)


def zeros(
    shape: int | tuple[int, ...],
    dtype: DTypeLike = float,
    *,
    order: _Order = "C",
    writable: bool = True,
    pool: SlotPool | None = None,
) -> np.ndarray:
    """Like :func:`empty`, filled with zero bytes (zero for every numeric and structured dtype)."""
    import numpy as np

    checked, dims = _shareable(dtype), _shape(shape)
    slot = _allocate(dims, checked, pool)
    np.frombuffer(slot.buf, dtype=np.uint8).fill(0)
    return _wrap(slot, dims, checked, order, writable)


def copy(array: ArrayLike, *, writable: bool = True, pool: SlotPool | None = None) -> np.ndarray:
    """A copy of ``array`` in a slot: same values, dtype (byte order included) and shape.

    The layout is C order, except that a Fortran-contiguous input stays Fortran-ordered (so a
    transposed image copies without a transpose). Non-contiguous views become contiguous.
    """
    import numpy as np

    source = np.asarray(array)
    checked = _shareable(source.dtype)
    order: _Order = "F" if source.flags.f_contiguous and not source.flags.c_contiguous else "C"
    slot = _allocate(source.shape, checked, pool)
    np.copyto(_scratch(slot, source.shape, checked, order), source, casting="no")
    return _wrap(slot, source.shape, checked, order, writable)


def stats() -> SlotStats:
    """Statistics of the default pool: slots, bytes, in use, per size class."""
    return default_pool().stats()


def leaks() -> list[SlotLeak]:
    """Slots of the default pool held right now, with where they were allocated."""
    return default_pool().leaks()


def trim() -> int:
    """Unlink the default pool's free slots; returns the bytes given back to the OS."""
    with _default_lock:
        pool = _default
    return 0 if pool is None else pool.trim()


def _reset_after_fork() -> None:
    global _default, _default_lock
    _default = None  # the parent's pool answers for the parent's segments, not the child's
    _default_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)
