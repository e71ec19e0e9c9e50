"""The out-of-band transport through a WorkerPool: arrays cross processes in shared-memory slots.

Behaviour only: what arrives, in which memory, with which flags; who holds which slot; what is
left in /dev/shm after workers or the parent die; how a full cap or a full /dev/shm fails.
Every pool here is created by its test and shut down before the test ends: a worker keeps warm
result slots ("restock") that only its exit gives back, and the autouse fixture in conftest.py
fails any test that leaves a segment behind.
"""

from __future__ import annotations

import gc
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import _transport_tasks as tasks
from _tasks import WAIT, is_gone, read_pid
from conftest import segment_is_ours
from memwise import WorkerPool, shared
from memwise.errors import SharedMemoryError, SharedMemoryExhausted, WorkerCrashed
from memwise.shared import SlotPool, find_slot
from memwise.shared._names import list_segments, parse

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="needs /dev/shm to list segments"),
]

KiB = 1024
MiB = 1024 * KiB
BIG = 2 * MiB  # above the default threshold of 1 MiB
SMALL = 1 * KiB


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def big_array(seed: int = 0, nbytes: int = BIG) -> np.ndarray:
    return np.random.default_rng(seed).random(nbytes // 8)


def same_bytes(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal dtype, shape and bytes: NaNs, -0.0 and padding compare as what they are."""
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()
    )


def same_values(got: np.ndarray, sent: np.ndarray) -> bool:
    """Equal shape and values, the dtype equal up to byte order.

    numpy (2.x) pickles a non-contiguous array inline with ``__reduce__``, and its
    ``__setstate__`` swaps a non-native plain dtype to native order (values intact): the
    transport is not involved, plain ``pickle.loads(pickle.dumps(a[::2], 5))`` does it too.
    """
    if got.dtype not in (sent.dtype, sent.dtype.newbyteorder("=")):
        return False
    return same_bytes(got.astype(sent.dtype), sent)


def eventually(check: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Wait until ``check()`` holds: the supervisor notices deaths on its own thread."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        gc.collect()
        time.sleep(0.02)


def in_use() -> int:
    gc.collect()  # arrays in reference cycles hold slots until the collector runs
    return shared.stats().in_use


def our_segments() -> set[str]:
    """Segments in /dev/shm this test session made, whatever they are named after (a segment
    named after the wrong owner still counts), each checked to be named after this process."""
    found = {name for name in list_segments() or () if segment_is_ours(name.lstrip("/"))}
    owner = shared.current_owner()
    misnamed = {name for name in found if (parsed := parse(name)) and parsed.owner != owner}
    assert not misnamed, f"segments not named after the pool's process: {misnamed}"
    return found


def created_by(pid: int) -> set[str]:
    """Segments that process ``pid`` (a worker of ours) created, whoever they name as owner."""
    return {
        name for name in list_segments() or () if (parsed := parse(name)) and parsed.creator == pid
    }


def owned_by(pid: int) -> set[str]:
    return set(shared.owned_segments(pid) or ())


def borrowers_of(name: str) -> tuple[int, ...] | None:
    """Who borrows the default pool's slot ``name`` right now (None: not held)."""
    for leak in shared.leaks():
        if leak.name == name:
            return leak.borrowers
    return None


def slot_name(array: np.ndarray) -> str:
    found = find_slot(array)
    assert found is not None, "the array does not live in a slot of this process"
    return found[1].name


@pytest.fixture
def fresh_default_pool() -> Iterator[Callable[..., SlotPool]]:
    """Install a SlotPool of our choosing as the default; restore (and close it) afterwards.

    A fresh pool also has no cached free slots, so the next allocation really creates a segment.
    """
    previous = shared.default_pool()
    installed: list[SlotPool] = []

    def install(**options: Any) -> SlotPool:
        pool = SlotPool(sweep=False, **options)
        installed.append(pool)
        shared.set_default_pool(pool)
        return pool

    yield install
    shared.set_default_pool(previous)
    gc.collect()
    for pool in installed:
        pool.close()


# --------------------------------------------------------------------------------------------
# Round trips: every dtype, shape and layout, above and below the threshold
# --------------------------------------------------------------------------------------------

_plain_dtypes = st.one_of(
    hnp.boolean_dtypes(),
    hnp.integer_dtypes(endianness="="),
    hnp.integer_dtypes(endianness=">"),
    hnp.unsigned_integer_dtypes(endianness="<"),
    hnp.unsigned_integer_dtypes(endianness=">"),
    hnp.floating_dtypes(endianness="="),
    hnp.floating_dtypes(endianness=">"),
    hnp.complex_number_dtypes(endianness="="),
    hnp.complex_number_dtypes(endianness=">"),
)
dtypes = st.one_of(_plain_dtypes, hnp.array_dtypes(_plain_dtypes, min_size=1, max_size=3))
shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=12)

# How the array handed to submit relates to the one drawn: contiguous either way, or a view
# whose bytes are scattered (those cannot go out of band: numpy pickles a copy inline).
LAYOUTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "C": lambda a: a,
    "F": np.asfortranarray,
    "transposed": lambda a: a.T,
    "strided": lambda a: a[::2] if a.ndim else a,
    "reversed": lambda a: a[::-1] if a.ndim else a,
    "F-strided": lambda a: np.asfortranarray(a)[..., ::2] if a.ndim else a,
}
THRESHOLD = KiB  # small, so that small arrays (fast to draw) exercise both paths


@st.composite
def sent_arrays(draw: st.DrawFn) -> tuple[np.ndarray, bool]:
    """An array to send, and whether to put it in a slot first (it then travels as a handle)."""
    base = draw(hnp.arrays(draw(dtypes), draw(shapes)))
    view = LAYOUTS[draw(st.sampled_from(sorted(LAYOUTS)))](base)
    return view, draw(st.booleans())


def offers_large_buffer(array: np.ndarray) -> bool:
    """Whether pickling ``array`` hands a buffer of at least THRESHOLD bytes out of band.

    Not every contiguous array does: numpy pickles some structured dtypes (one with a field
    named ":", found by hypothesis) inline, with no buffer for the transport to take.
    """
    buffers: list[pickle.PickleBuffer] = []
    pickle.dumps(array, 5, buffer_callback=buffers.append)
    return any(buffer.raw().nbytes >= THRESHOLD for buffer in buffers)


def _contiguous(array: np.ndarray) -> bool:
    return bool(array.flags.c_contiguous or array.flags.f_contiguous)


def test_round_trip_preserves_every_dtype_shape_and_layout() -> None:
    with WorkerPool(1, shm_threshold=THRESHOLD) as pool:

        @settings(
            max_examples=150,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(sent_arrays())
        def check(drawn: tuple[np.ndarray, bool]) -> None:
            view, in_slot = drawn
            sent = shared.copy(view) if in_slot else view
            result = pool.submit(tasks.echo, sent).result(WAIT)
            assert isinstance(result, np.ndarray)
            if _contiguous(view):
                assert same_bytes(result, view)  # dtype exact, byte order included
            else:
                assert same_values(result, view)
            # Whatever the layout sent, the worker holds a contiguous array and returns it
            # through a slot when pickle offers its buffer and it is large enough.
            if view.dtype.names is None:
                assert offers_large_buffer(result) == (view.nbytes >= THRESHOLD)
            if offers_large_buffer(result):
                assert find_slot(result) is not None, "a large result must arrive in a slot"
                assert not result.flags.writeable
            else:
                assert find_slot(result) is None
            if view.flags.f_contiguous and not view.flags.c_contiguous:
                assert result.flags.f_contiguous  # Fortran order survives the trip

        check()


@pytest.mark.parametrize("nbytes", [0, 8, SMALL, BIG])
def test_bytes_and_bytearray_round_trip(nbytes: int) -> None:
    payload = os.urandom(nbytes)
    with WorkerPool(1) as pool:
        back_bytes = pool.submit(tasks.echo, payload).result(WAIT)
        back_array = pool.submit(tasks.echo, bytearray(payload)).result(WAIT)
    assert type(back_bytes) is bytes and back_bytes == payload
    assert type(back_array) is bytearray and back_array == payload


def test_bytes_viewed_as_an_array_travel_through_a_slot() -> None:
    """bytes and bytearray themselves always travel inline: the C pickler writes them without
    asking ``buffer_callback`` (or ``reducer_override``). A uint8 view of them does not."""
    payload = os.urandom(BIG)
    with WorkerPool(1) as pool:
        before = shared.stats()
        seen = pool.submit(tasks.inspect, np.frombuffer(payload, np.uint8)).result(WAIT)
        after = shared.stats()
    assert seen["slot_backed"] and seen["digest"] == tasks.checksum(np.frombuffer(payload, "u1"))
    assert (after.created + after.reused) - (before.created + before.reused) == 1


def test_arrays_nested_in_containers_and_dataclasses() -> None:
    arrays = [big_array(seed) for seed in range(4)]
    small = np.arange(SMALL // 8, dtype=np.float64)
    payload = {
        "list": [arrays[0], (arrays[1], small)],
        "box": tasks.Box("b", arrays[2], more=[arrays[3], {"deeper": small}]),
    }
    with WorkerPool(1) as pool:
        seen = pool.submit(tasks.inspect_nested, payload).result(WAIT)
        back = pool.submit(tasks.echo, payload).result(WAIT)
    # In order: arrays[0], arrays[1], small, arrays[2], arrays[3], small (memoized: same object).
    big_flags = [seen[i] for i in (0, 1, 3, 4)]
    assert big_flags == [(False, True)] * 4, "large arguments arrive as read-only slot views"
    assert seen[2][1] is False and seen[5][1] is False, "small arguments travel inline"
    received = [
        back["list"][0],
        back["list"][1][0],
        back["box"].array,
        back["box"].more[0],
    ]
    for original, arrived in zip(arrays, received, strict=True):
        assert same_bytes(arrived, original)
        assert find_slot(arrived) is not None and not arrived.flags.writeable
    assert isinstance(back["box"], tasks.Box) and back["box"].label == "b"
    assert same_bytes(back["list"][1][1], small) and find_slot(back["list"][1][1]) is None
    assert back["box"].more[1]["deeper"] is back["list"][1][1]  # shared references survive


# --------------------------------------------------------------------------------------------
# Read-only views of slots, in the worker and in the parent
# --------------------------------------------------------------------------------------------


def test_large_arguments_arrive_as_read_only_slot_views() -> None:
    big, small = big_array(), np.arange(16.0)
    with WorkerPool(1) as pool:
        big_seen = pool.submit(tasks.inspect, big).result(WAIT)
        small_seen = pool.submit(tasks.inspect, small).result(WAIT)
        fortran_seen = pool.submit(tasks.inspect, np.asfortranarray(big.reshape(512, 512))).result(
            WAIT
        )
    assert big_seen == {"writeable": False, "slot_backed": True, "digest": tasks.checksum(big)}
    assert fortran_seen["slot_backed"] and not fortran_seen["writeable"]
    assert small_seen["slot_backed"] is False


def test_large_results_arrive_as_read_only_slot_views() -> None:
    with WorkerPool(1) as pool:
        result = pool.submit(tasks.make_array, BIG).result(WAIT)
        small = pool.submit(tasks.make_array, SMALL).result(WAIT)
    assert np.array_equal(result, np.arange(BIG, dtype=np.uint8))
    assert find_slot(result) is not None  # adopted by this process's pool
    assert not result.flags.writeable
    with pytest.raises(ValueError):
        result[0] = 1
    with pytest.raises(ValueError):
        result.flags.writeable = True  # a read-only slot view cannot be made writable
    assert find_slot(small) is None and small.flags.writeable


# --------------------------------------------------------------------------------------------
# Arrays already in slots travel as handles
# --------------------------------------------------------------------------------------------


def _filled_empty(source: np.ndarray) -> np.ndarray:
    array = shared.empty(source.shape, source.dtype)
    array[...] = source
    return array


@pytest.mark.parametrize("make", [shared.copy, _filled_empty], ids=["copy", "empty"])
def test_an_array_in_a_slot_is_lent_as_a_handle(
    tmp_path: Any, make: Callable[[np.ndarray], np.ndarray]
) -> None:
    array = make(big_array())
    name = slot_name(array)
    with WorkerPool(1) as pool:
        before = shared.stats()
        future = pool.submit(tasks.hold, array, str(tmp_path / "pid"), str(tmp_path / "go"))
        pid = read_pid(tmp_path / "pid")
        during = shared.stats()
        assert borrowers_of(name) == (pid,), "the worker borrows the array's own slot"
        (tmp_path / "go").touch()
        assert future.result(WAIT) == tasks.checksum(array)  # it saw the same bytes
    # No slot was taken for the argument: it was neither copied nor reallocated.
    assert (during.created, during.reused) == (before.created, before.reused)
    eventually(lambda: borrowers_of(name) == (), "the worker returning the slot")


def test_a_contiguous_slice_of_a_slot_travels_with_its_offset() -> None:
    array = shared.copy(big_array(nbytes=3 * MiB))
    part = array[1000 : 1000 + BIG // 8]  # starts 8000 bytes into the slot
    with WorkerPool(1) as pool:
        before = shared.stats()
        seen = pool.submit(tasks.inspect, part).result(WAIT)
        after = shared.stats()
    assert seen["digest"] == tasks.checksum(part) and seen["slot_backed"]
    assert (after.created, after.reused) == (before.created, before.reused)


@contextmanager
def unwedged(pool: WorkerPool) -> Iterator[WorkerPool]:
    """Shut ``pool`` down even if a bug left it waiting for a task its worker never got.

    Without this, a wedged pool hangs the test in ``shutdown`` until the global timeout.
    """
    try:
        yield pool
    finally:
        # Workers still busy after 5 s are killed, and their tasks' futures fail.
        pool.shutdown(wait=True, cancel_futures=True, timeout=5.0)


def test_an_array_from_a_non_default_slot_pool_is_sent() -> None:
    """Arrays made with ``pool=`` (e.g. ``BufferPool(shared=True, pool=...)``) live in slots
    that ``find_slot`` finds but the default pool does not hold."""
    own = SlotPool(sweep=False)
    try:
        array = shared.copy(big_array(), pool=own)
        with unwedged(WorkerPool(1)) as pool:
            assert pool.submit(tasks.checksum, array).result(WAIT) == tasks.checksum(array)
            small = np.ones(4)
            assert pool.submit(tasks.checksum, small).result(WAIT) == tasks.checksum(small)
        del array
    finally:
        own.close()


# --------------------------------------------------------------------------------------------
# Slot lifetime: release on GC, reuse, restock
# --------------------------------------------------------------------------------------------


def test_results_give_their_slot_back_when_collected() -> None:
    with WorkerPool(1) as pool:
        baseline = in_use()
        result = pool.submit(tasks.one_minus, big_array()).result(WAIT)
        # The argument's slot is freed by a callback of the future, which may run just after
        # result() returns.
        eventually(lambda: in_use() == baseline + 1, "the argument's slot coming back")
        view = result[10:20]  # a view keeps the slot alive on its own
        del result
        assert in_use() == baseline + 1
        del view
        assert in_use() == baseline


def test_repeated_round_trips_reuse_slots() -> None:
    trips = 20
    array = big_array()
    with WorkerPool(1) as pool:
        pool.submit(tasks.one_minus, array).result(WAIT)  # warm up: first slots are created
        before = shared.stats()
        names = set()
        for _ in range(trips):
            result = pool.submit(tasks.one_minus, array).result(WAIT)
            assert np.array_equal(result, 1 - array)
            names.add(slot_name(result))
            del result
        after = shared.stats()
    assert after.created - before.created <= 2, "a fresh segment per trip: no reuse"
    assert after.reused - before.reused >= trips
    assert after.adopted - before.adopted == trips
    # Restock: the worker writes its results into warm slots the parent gave back.
    assert len(names) <= 3, f"{len(names)} distinct result segments for {trips} trips"


def test_map_and_imap_with_arrays() -> None:
    arrays = [big_array(seed) for seed in range(6)]
    with WorkerPool(2) as pool:
        mapped = list(pool.map(tasks.negate, arrays, chunksize=2))
        ordered = list(pool.imap(tasks.one_minus, iter(arrays), prefetch=3))
        unordered = list(pool.imap(tasks.negate, arrays, ordered=False))
    for array, got in zip(arrays, mapped, strict=True):
        assert np.array_equal(got, -array) and find_slot(got) is not None
    for array, got in zip(arrays, ordered, strict=True):
        assert np.array_equal(got, 1 - array) and not got.flags.writeable
    assert sorted(tasks.checksum(a) for a in unordered) == sorted(
        tasks.checksum(-a) for a in arrays
    )
    del mapped, ordered, unordered, got
    assert in_use() == 0, shared.leaks()


# --------------------------------------------------------------------------------------------
# Deaths: a worker killed holding slots, a parent killed mid-flight
# --------------------------------------------------------------------------------------------


def test_worker_killed_while_borrowing_gives_the_slots_back(tmp_path: Any) -> None:
    before = our_segments()
    with WorkerPool(1) as pool:
        lent = shared.copy(big_array(1))  # lent as a handle
        future = pool.submit(
            tasks.hold_forever, [big_array(2), lent], str(tmp_path / "pid")
        )  # the plain array is copied into a slot of the parent's pool
        pid = read_pid(tmp_path / "pid")
        name = slot_name(lent)
        assert borrowers_of(name) == (pid,)
        assert in_use() == 2
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(WorkerCrashed):
            future.result(WAIT)
        eventually(lambda: borrowers_of(name) == (), "the dead worker's loan ending")
        del lent
        eventually(lambda: in_use() == 0, "every slot coming back")
        assert not created_by(pid)
        assert pool.submit(tasks.checksum, big_array(3)).result(WAIT) == tasks.checksum(
            big_array(3)
        )
    shared.trim()
    assert our_segments() <= before


def test_worker_killed_while_sending_a_result_leaves_nothing(tmp_path: Any) -> None:
    before = our_segments()
    same, other = big_array(1), big_array(2, nbytes=3 * MiB)
    with WorkerPool(1) as pool:
        # Two trips of the same size: the next task brings the worker a warm slot (restock),
        # which it holds when it dies, next to a result slot it creates (the other size).
        for _ in range(2):
            assert np.array_equal(pool.submit(tasks.echo, same).result(WAIT), same)
        future = pool.submit(tasks.die_while_sending, [same, other], str(tmp_path / "pid"))
        with pytest.raises(WorkerCrashed):
            future.result(WAIT)
        pid = read_pid(tmp_path / "pid")
        eventually(lambda: in_use() == 0, "every slot coming back")
        assert not created_by(pid), "segments the dead worker created were not unlinked"
        assert np.array_equal(pool.submit(tasks.echo, other).result(WAIT), other)
    shared.trim()
    assert our_segments() <= before, "slots given to the dead worker were not unlinked"


PARENT_SCRIPT = """
import os, signal
import numpy as np
from memwise import WorkerPool, shared

if __name__ == "__main__":
    pool = WorkerPool(2)
    array = np.ones(4_000_000)  # 32 MB
    for _ in range(3):  # warm: result slots exist and workers hold restocked ones
        pool.submit(np.subtract, 1.0, array).result(60)
    futures = [pool.submit(np.subtract, 1.0, array) for _ in range(6)]
    print(*(row.pid for row in pool.snapshot().workers))
    mine = shared.owned_segments()
    print(*mine, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_parent_sigkill_leaves_segments_that_the_next_pool_sweeps(tmp_path: Any) -> None:
    script = tmp_path / "killed_parent.py"
    script.write_text(textwrap.dedent(PARENT_SCRIPT))
    out = tmp_path / "out.txt"
    with open(out, "w") as stdout:
        child = subprocess.Popen(
            [sys.executable, str(script)], stdout=stdout, stderr=subprocess.PIPE
        )
        _, stderr = child.communicate(timeout=WAIT)
    assert child.returncode == -signal.SIGKILL, stderr.decode()[-2000:]
    workers_line, segments_line = out.read_text().splitlines()
    workers = [int(pid) for pid in workers_line.split()]
    assert len(workers) == 2
    assert segments_line.split(), "the parent held no segment when killed: nothing was tested"
    # Workers exit with their parent; wait, so none creates a segment after the sweep.
    eventually(lambda: all(is_gone(pid) for pid in workers), "the orphaned workers exiting")
    # Test sessions running in parallel on this machine sweep dead owners too when their pools
    # start, so what is left now may already be gone; what matters is that nothing survives.
    with WorkerPool(1):
        pass  # starting a pool sweeps the segments of dead owners
    assert not owned_by(child.pid), f"left after the sweep: {sorted(owned_by(child.pid))}"


# --------------------------------------------------------------------------------------------
# Limits: a cap smaller than the data, a full /dev/shm
# --------------------------------------------------------------------------------------------


def test_cap_smaller_than_an_argument_fails_its_future(fresh_default_pool: Any) -> None:
    fresh_default_pool(cap=4 * MiB, wait=0.2)
    with WorkerPool(1) as pool:
        future = pool.submit(tasks.checksum, big_array(nbytes=8 * MiB))
        with pytest.raises(SharedMemoryExhausted, match="cap"):
            future.result(WAIT)
        small = np.arange(100.0)
        assert pool.submit(tasks.checksum, small).result(WAIT) == tasks.checksum(small)


def test_cap_full_of_held_slots_fails_its_future(fresh_default_pool: Any) -> None:
    fresh_default_pool(cap=4 * MiB, wait=0.2)
    held = shared.empty(3 * MiB, np.uint8)
    with WorkerPool(1) as pool:
        future = pool.submit(tasks.checksum, big_array())
        with pytest.raises(SharedMemoryExhausted, match="no room"):
            future.result(WAIT)
        del held  # room again
        array = big_array()
        assert pool.submit(tasks.checksum, array).result(WAIT) == tasks.checksum(array)


def test_cap_smaller_than_an_argument_with_fallback_pickles_inline(
    fresh_default_pool: Any,
) -> None:
    fresh_default_pool(cap=4 * MiB, wait=0.2)
    array = big_array(nbytes=8 * MiB)
    with WorkerPool(1, shm_fallback=True) as pool:
        with pytest.warns(RuntimeWarning, match="shared memory is full"):
            future = pool.submit(tasks.inspect, array)
        seen = future.result(WAIT)
    assert seen["digest"] == tasks.checksum(array)
    assert seen["slot_backed"] is False  # it came through the pipe


def test_full_dev_shm_fails_the_future_clearly(
    fresh_default_pool: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    fresh_default_pool()  # no cached free slot: the next allocation must create a segment
    with WorkerPool(1) as pool:
        monkeypatch.setattr("memwise.shared._segment.shm_free_bytes", lambda: 4096)
        future = pool.submit(tasks.checksum, big_array())
        with pytest.raises(SharedMemoryError, match=r"/dev/shm"):
            future.result(WAIT)
        small = np.arange(100.0)
        assert pool.submit(tasks.checksum, small).result(WAIT) == tasks.checksum(small)
        monkeypatch.undo()
        array = big_array()
        assert pool.submit(tasks.checksum, array).result(WAIT) == tasks.checksum(array)
        assert pool.snapshot().restarts == 0


def test_full_dev_shm_in_the_worker_sends_results_inline() -> None:
    """``_oob.Incoming``: "a result is never lost for want of shared memory"."""
    with WorkerPool(1, initializer=tasks.full_shared_memory) as pool:
        result = pool.submit(tasks.make_array, BIG).result(WAIT)
        assert find_slot(result) is None  # it came through the pipe, not a slot
    assert np.array_equal(result, np.arange(BIG, dtype=np.uint8))


def test_a_result_built_in_a_slot_is_handed_over() -> None:
    array = big_array(7)
    with WorkerPool(1) as pool:
        for _ in range(3):  # with restocking, the worker builds results in warm slots
            got = pool.submit(tasks.one_minus_in_a_slot, array).result(WAIT)
            assert np.array_equal(got, 1 - array)
            assert find_slot(got) is not None and not got.flags.writeable
            del got
    assert in_use() == 0, shared.leaks()


def test_a_result_that_cannot_be_mapped_fails_only_its_future(monkeypatch: Any) -> None:
    from memwise import _oob

    real = _oob.adopted
    calls = {"n": 0}

    def fail_once(handles: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError(24, "Too many open files (simulated)")
        return real(handles)

    monkeypatch.setattr(_oob, "adopted", fail_once)
    array = big_array(3)
    with WorkerPool(1) as pool:
        with pytest.raises(OSError, match="Too many open files"):
            pool.submit(tasks.one_minus, array).result(WAIT)
        assert np.array_equal(pool.submit(tasks.one_minus, array).result(WAIT), 1 - array)
    gc.collect()
