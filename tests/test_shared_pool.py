"""SlotPool in one process: size classes, cap, waiting, lending, giving, reclaiming, closing."""

from __future__ import annotations

import gc
import itertools
import os
import threading

import numpy as np
import pytest

from memwise import shared
from memwise.errors import ClosedError, SharedMemoryExhausted
from memwise.shared import SlotPool, slot_array, sweep_orphans
from memwise.shared._guard import Guard
from memwise.shared._sizes import MIN_SIZE, size_class

KiB, MiB = 1024, 1024 * 1024
NOBODY = 4_000_001  # a pid no process has (above Linux's pid_max)


def on_dev_shm(name: str) -> bool:
    return os.path.exists("/dev/shm" + name)


@pytest.fixture
def pool():
    with SlotPool(sweep=False) as slots:
        yield slots


def test_size_classes_are_quarter_steps_of_pages() -> None:
    assert size_class(0) == size_class(MIN_SIZE) == MIN_SIZE
    sizes = sorted({size_class(n) for n in range(MIN_SIZE, 64 * MIN_SIZE, 4099)})
    assert len(sizes) == 4 * 6 + 1  # four classes per doubling
    for smaller, larger in itertools.pairwise(sizes):
        assert larger % 4096 == 0 and larger / smaller <= 1.25  # page rounding of small classes
    for n in (48_000_000, 3 * MiB - 1, 3 * MiB + 1):
        assert n <= size_class(n) < 1.19 * n


def test_allocate_write_release_reuse(pool: SlotPool) -> None:
    slot = pool.allocate(100 * KiB)
    assert slot.buf.nbytes == slot.handle.nbytes == 100 * KiB
    assert slot.handle.size == size_class(100 * KiB) and on_dev_shm(slot.handle.name)
    slot.buf[:5] = b"hello"
    slot.release()
    again = pool.allocate(100 * KiB - 1)
    assert again.handle.name == slot.handle.name
    assert bytes(again.buf[:5]) == b"hello"  # reuse does not clear: zeros() does
    with pytest.raises(ValueError, match="already released"):
        slot.release()  # a stale lease cannot release the new one
    again.release()
    stats = pool.stats()
    assert (stats.slots, stats.in_use, stats.created, stats.reused) == (1, 0, 1, 1)


def test_stats_per_size_class(pool: SlotPool) -> None:
    held = [pool.allocate(n) for n in (KiB, KiB, MiB)]
    held[0].release()
    stats = pool.stats()
    assert [(c.size, c.slots, c.in_use) for c in stats.classes] == [
        (MIN_SIZE, 2, 1),
        (MiB, 1, 1),
    ]
    assert stats.bytes == 2 * MIN_SIZE + MiB and stats.in_use_bytes == MIN_SIZE + MiB
    for slot in held[1:]:
        slot.release()


def test_cap_evicts_free_slots_of_other_classes() -> None:
    with SlotPool(cap=MiB, sweep=False) as pool:
        small = pool.allocate(KiB)
        name = small.handle.name
        small.release()
        big = pool.allocate(MiB)  # only fits once the free small slot is gone
        assert not on_dev_shm(name)
        assert pool.stats().evicted == 1
        big.release()


def test_full_cap_waits_for_a_release_from_another_thread() -> None:
    with SlotPool(cap=MiB, sweep=False) as pool:
        held = pool.allocate(MiB)
        releaser = threading.Timer(0.05, held.release)
        releaser.start()
        try:
            again = pool.allocate(MiB, timeout=30)
        finally:
            releaser.join()
        assert again.handle.name == held.handle.name
        again.release()


def test_full_cap_times_out_with_a_clear_error() -> None:
    with SlotPool(cap=MiB, wait=0.01, sweep=False) as pool:
        held = pool.allocate(MiB)
        with pytest.raises(SharedMemoryExhausted, match=r"held by 1 slots.*leaks\(\)"):
            pool.allocate(KiB)
        assert pool.try_allocate(KiB) is None
        held.release()
        pool.allocate(KiB).release()


def test_full_cap_collects_arrays_held_by_reference_cycles() -> None:
    with SlotPool(cap=MiB, sweep=False) as pool:
        gc.disable()  # only the pool may collect here
        try:
            cycle: list[object] = [shared.empty(MiB, np.uint8, pool=pool)]
            cycle.append(cycle)
            del cycle
            assert pool.stats().in_use == 1
            pool.allocate(MiB, timeout=30).release()
        finally:
            gc.enable()
        assert pool.stats().waits == 0  # the collection freed it: nobody had to wait


def test_lent_slot_stays_in_use_until_returned(pool: SlotPool) -> None:
    slot = pool.allocate(KiB)
    handle = pool.lend(slot.handle, to=NOBODY)
    slot.release()
    assert pool.stats().in_use == 1  # the borrower still reads it
    pool.returned([handle], by=NOBODY)
    assert pool.stats().in_use == 0
    with pytest.raises(ValueError, match="did not borrow"):
        pool.returned([handle], by=NOBODY)
    with pytest.raises(ValueError, match="not held"):
        pool.lend(handle, to=NOBODY)  # free slots cannot be lent


def test_give_and_adopt_move_ownership_between_pools() -> None:
    with SlotPool(sweep=False) as parent, SlotPool(owner=parent.owner, sweep=False) as worker:
        slot = worker.allocate(8 * 100)
        np.frombuffer(slot.buf, np.float64)[:] = np.arange(100)
        handle = worker.give(slot)
        assert worker.stats().slots == 0
        with pytest.raises(ValueError):
            slot.release()  # given away: no longer this pool's
        result = np.frombuffer(slot_array(parent.adopt(handle)), np.float64)
        assert np.array_equal(result, np.arange(100)) and not result.flags.writeable
        assert parent.stats().in_use == 1
        del result
        assert parent.stats().in_use == 0 and parent.stats().adopted == 1


def test_lent_slot_cannot_be_given_away(pool: SlotPool) -> None:
    slot = pool.allocate(KiB)
    pool.lend(slot.handle, to=NOBODY)
    with pytest.raises(ValueError, match="lent to processes"):
        pool.give(slot)
    pool.returned([slot.handle], by=NOBODY)
    slot.release()


def test_reclaim_ends_loans_and_unlinks_gifts(pool: SlotPool) -> None:
    lent = pool.allocate(KiB)
    pool.lend(lent.handle, to=NOBODY)
    lent.release()
    gift = pool.give(pool.allocate(KiB), to=NOBODY)
    assert on_dev_shm(gift.name)
    assert pool.reclaim(NOBODY) == [gift.name]
    assert not on_dev_shm(gift.name)
    assert pool.stats().in_use == 0


def test_close_unlinks_everything_but_live_arrays_keep_working() -> None:
    pool = SlotPool(sweep=False)
    array = shared.zeros(1000, pool=pool)
    spare = pool.allocate(KiB)
    names = [shared.find_slot(array)[1].name, spare.handle.name]  # type: ignore[index]
    spare.release()
    pool.close()
    assert not any(on_dev_shm(name) for name in names)
    array[:] = 1.0  # still mapped
    assert array.sum() == 1000
    del array  # releasing into a closed pool is harmless
    with pytest.raises(ClosedError, match="closed"):
        pool.allocate(KiB)


def test_sweep_spares_live_owners(pool: SlotPool) -> None:
    slot = pool.allocate(KiB)
    assert slot.handle.name not in sweep_orphans()
    assert on_dev_shm(slot.handle.name)
    slot.release()


def test_guard_defers_calls_from_inside_a_critical_section() -> None:
    guard, calls = Guard(), []
    with guard:
        guard.run_or_defer(calls.append, "from a finalizer")
        assert calls == []  # the running method's state is not touched under it
    assert calls == ["from a finalizer"]
    guard.run_or_defer(calls.append, "outside")
    assert calls == ["from a finalizer", "outside"]
