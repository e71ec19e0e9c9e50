"""memwise.shared arrays: round trips, read-only views, lifetime, reuse, limits."""

from __future__ import annotations

import gc
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from memwise import shared
from memwise.errors import SerializationError, SharedMemoryError, SharedMemoryExhausted
from memwise.shared import SlotPool, borrow, find_slot, take_returns
from memwise.shared._names import MAX_NAME, Owner, new_name, parse

MiB = 1024 * 1024
PEER = 4_000_000  # a pid that borrows slots in the in-process wire tests

# --------------------------------------------------------------------------------------------
# Hypothesis strategies: every dtype that can live in shared memory, in any layout.
# --------------------------------------------------------------------------------------------

_plain_dtypes = st.one_of(
    hnp.scalar_dtypes(),
    hnp.integer_dtypes(endianness=">"),
    hnp.unsigned_integer_dtypes(endianness="<"),
    hnp.floating_dtypes(endianness=">"),
    hnp.complex_number_dtypes(endianness=">"),
    hnp.byte_string_dtypes(min_len=1),
    hnp.unicode_string_dtypes(min_len=1, endianness=">"),
)
dtypes = st.one_of(_plain_dtypes, hnp.array_dtypes(_plain_dtypes, min_size=1, max_size=3))
shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)


@st.composite
def arrays(draw: st.DrawFn) -> np.ndarray:
    """An array, then possibly a transposed (Fortran-order) or strided view of it."""
    array = draw(hnp.arrays(draw(dtypes), draw(shapes)))
    layout = draw(st.sampled_from(["as is", "transposed", "strided"]))
    if layout == "transposed":
        return array.T
    if layout == "strided" and array.ndim:
        return array[..., ::2]
    return array


def same_content(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal dtype, shape and bytes (bytes, so NaNs and structured fields compare exactly)."""
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()
    )


# --------------------------------------------------------------------------------------------
# copy / empty / zeros
# --------------------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arrays())
def test_copy_preserves_values_dtype_and_shape(array: np.ndarray) -> None:
    copied = shared.copy(array)
    assert same_content(copied, array)
    assert copied.dtype.byteorder == array.dtype.byteorder
    assert copied.flags.writeable
    assert find_slot(copied) is not None
    if array.flags.f_contiguous and not array.flags.c_contiguous:
        assert copied.flags.f_contiguous  # documented: Fortran order is kept
    else:
        assert copied.flags.c_contiguous


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arrays(), st.sampled_from([list, dict, tuple]))
def test_pickle5_buffers_travel_through_slots(array: np.ndarray, container: type) -> None:
    """What the transport does: out-of-band buffers into lent slots, rebuilt on borrowed views."""
    pool = SlotPool(sweep=False)
    try:
        obj = {"a": array, "b": [array, 1]} if container is dict else container([array, "x"])
        buffers: list[pickle.PickleBuffer] = []
        data = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
        handles = []
        for buffer in buffers:
            raw = buffer.raw()
            slot = pool.allocate(raw.nbytes)
            slot.buf[:] = raw
            handles.append(pool.lend(slot.handle, to=PEER))
            slot.release()
        received = pickle.loads(data, buffers=[borrow(handle) for handle in handles])
        rebuilt = received["a"] if container is dict else received[0]
        # Compared with an in-band pickle round trip: numpy's pickling has quirks of its own
        # (big-endian datetimes come back native) that slots must neither add to nor hide.
        assert same_content(rebuilt, pickle.loads(pickle.dumps(array, protocol=5)))
        if handles:
            assert not rebuilt.flags.writeable  # received arrays are read-only
            assert pool.stats().in_use == len(handles)
        del received, rebuilt
        returns = take_returns()
        assert sorted(h.name for h in returns) == sorted(h.name for h in handles)
        pool.returned(returns, by=PEER)
        assert pool.stats().in_use == 0
    finally:
        pool.close()


@pytest.mark.parametrize("order", ["C", "F"])
def test_empty_and_zeros_are_writable_slot_arrays(order: str) -> None:
    zeros = shared.zeros((3, 4), np.int32, order=order)
    assert not zeros.any()
    assert zeros.flags.writeable
    assert zeros.flags[f"{order}_CONTIGUOUS"]
    zeros[1, 2] = 7
    assert zeros.sum() == 7
    empty = shared.empty(5, ">f8")
    assert empty.shape == (5,) and empty.dtype == np.dtype(">f8")


def test_zeros_clears_a_reused_slot() -> None:
    first = shared.empty(1000, np.uint8)
    first[:] = 255
    name = find_slot(first)[1].name  # type: ignore[index]
    del first
    again = shared.zeros(1000, np.uint8)
    assert find_slot(again)[1].name == name  # type: ignore[index]
    assert not again.any()


def test_empty_arrays_and_scalars() -> None:
    for array in (np.empty((0, 3)), np.array(3.5), np.zeros((2, 0), "U3")):
        assert same_content(shared.copy(array), array)


def test_read_only_arrays_cannot_be_made_writable() -> None:
    frozen = shared.copy(np.arange(10), writable=False)
    for view in (frozen, frozen[2:], frozen.reshape(2, 5).T):
        with pytest.raises(ValueError):
            view.flags.writeable = True
        with pytest.raises(ValueError):
            view[0] = 1


def test_object_dtype_is_refused() -> None:
    with pytest.raises(SerializationError, match="Python object"):
        shared.copy(np.array([object()]))


# --------------------------------------------------------------------------------------------
# Lifetime: garbage collection, release, reuse
# --------------------------------------------------------------------------------------------


def test_slot_returns_when_the_last_view_is_collected() -> None:
    pool = SlotPool(sweep=False)
    try:
        array = shared.zeros((100, 100), pool=pool)
        views = [array[::2], array.T, array.reshape(-1), array.view(np.int64), memoryview(array)]
        del array
        assert pool.stats().in_use == 1
        views.pop()
        del views[:-1]
        assert pool.stats().in_use == 1
        del views
        assert pool.stats().in_use == 0
    finally:
        pool.close()


def test_slot_in_a_reference_cycle_returns_after_gc() -> None:
    pool = SlotPool(sweep=False)
    try:
        cycle: list[object] = [shared.empty(10, pool=pool)]
        cycle.append(cycle)
        del cycle
        gc.collect()
        assert pool.stats().in_use == 0
    finally:
        pool.close()


def test_explicit_release_frees_now_and_only_once() -> None:
    pool = SlotPool(sweep=False)
    try:
        array = shared.empty(10, pool=pool)
        view = array[3:]
        shared.release(view)  # any view finds its slot
        assert pool.stats().in_use == 0
        with pytest.raises(ValueError, match="already released"):
            shared.release(array)
        with pytest.raises(ValueError, match="not backed"):
            shared.release(np.zeros(3))
    finally:
        pool.close()


def test_same_segment_comes_back_after_release() -> None:
    pool = SlotPool(sweep=False)
    try:
        first = shared.empty(3 * MiB, np.uint8, pool=pool)
        name = find_slot(first)[1].name  # type: ignore[index]
        shared.release(first)
        second = shared.empty(3 * MiB - 5, np.uint8, pool=pool)  # same size class
        assert find_slot(second)[1].name == name  # type: ignore[index]
        assert pool.stats().created == 1 and pool.stats().reused == 1
    finally:
        pool.close()


def test_find_slot_gives_the_offset_of_a_view() -> None:
    array = shared.empty((10, 8), np.float64)
    _, handle = find_slot(array[2:5])  # type: ignore[misc]
    assert (handle.offset, handle.nbytes) == (2 * 8 * 8, 3 * 8 * 8)
    assert find_slot(array[:, 1]) is None  # not contiguous: travels as a copy
    assert find_slot(memoryview(array[2:5])) == find_slot(pickle.PickleBuffer(array[2:5]))
    assert find_slot(memoryview(array[2:5]))[1] == handle  # type: ignore[index]
    assert find_slot(np.zeros(3)) is None
    array[2:5] = 1.5
    assert np.all(np.frombuffer(shared.attach(handle), np.float64) == 1.5)


def test_leaks_say_where_slots_were_taken() -> None:
    pool = SlotPool(sweep=False)
    try:
        held = shared.empty(10, pool=pool)
        (leak,) = pool.leaks()
        assert __file__ in leak.site and "test_leaks_say_where" in leak.site
        assert leak.nbytes == held.nbytes
    finally:
        pool.close()


# --------------------------------------------------------------------------------------------
# Limits: cap, full /dev/shm
# --------------------------------------------------------------------------------------------


def test_cap_smaller_than_the_data_is_a_clear_error() -> None:
    with SlotPool(cap=MiB, sweep=False) as pool:
        with pytest.raises(SharedMemoryExhausted, match="more than the whole shared-memory cap"):
            shared.empty(2 * MiB, np.uint8, pool=pool)
        assert pool.try_allocate(2 * MiB) is None  # the transport's signal to pickle inline


def test_full_dev_shm_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("memwise.shared._segment.shm_free_bytes", lambda: 4096)
    with (
        SlotPool(sweep=False) as pool,
        pytest.raises(SharedMemoryError, match=r"free in /dev/shm.*--shm-size"),
    ):
        pool.allocate(MiB)


@pytest.mark.skipif(not hasattr(os, "posix_fallocate"), reason="no posix_fallocate")
def test_no_space_when_reserving_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    with SlotPool(sweep=False) as pool, pytest.raises(SharedMemoryError, match="free in"):
        pool.allocate(MiB)
    # the half-made segment was unlinked: the autouse fixture checks /dev/shm


# --------------------------------------------------------------------------------------------
# Names and imports
# --------------------------------------------------------------------------------------------


def test_names_fit_macos_and_encode_owner_and_creator() -> None:
    owner = Owner(pid=4_194_304, tag="zzzz")  # the largest Linux pid
    name = new_name(owner)
    assert name.startswith("/mw_") and len(name) <= MAX_NAME
    parsed = parse(name)
    assert parsed is not None
    assert parsed.owner == owner and parsed.creator == os.getpid()
    assert parse("/psm_1234") is None and parse("/mw_zz") is None


def test_importing_shared_does_not_import_numpy() -> None:
    script = textwrap.dedent(
        """
        import sys
        import memwise.shared as shared
        with shared.SlotPool(sweep=False) as pool:
            slot = pool.allocate(1000)
            slot.buf[:3] = b"abc"
            slot.release()
        assert "numpy" not in sys.modules, "memwise.shared imported numpy"
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
