"""Slots across processes: borrow and give over a pipe, a killed worker, a killed parent."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import textwrap
from multiprocessing.connection import Connection

import numpy as np
import pytest

from memwise import shared
from memwise.shared import Owner, SlotHandle, SlotPool, find_slot, slot_array, sweep_orphans

pytestmark = pytest.mark.skipif(
    not os.path.isdir("/dev/shm"), reason="needs /dev/shm to list segments"
)

START_METHODS = [m for m in ("spawn", "forkserver") if m in multiprocessing.get_all_start_methods()]


def on_dev_shm(name: str) -> bool:
    return os.path.exists("/dev/shm" + name)


def double_in_worker(conn: Connection, owner: Owner) -> None:
    """A worker: borrow the argument, write 2x into a slot of its own, give that to the parent."""
    pool = SlotPool(owner=owner, sweep=False)
    handle = conn.recv()
    argument = np.frombuffer(shared.borrow(handle), np.float64)
    assert not argument.flags.writeable
    slot = pool.allocate(argument.nbytes)
    np.frombuffer(slot.buf, np.float64)[:] = argument * 2
    del argument
    conn.send((pool.give(slot), shared.take_returns()))
    conn.recv()  # the parent has adopted the result: we may go
    pool.close()


@pytest.mark.parametrize("method", START_METHODS)
def test_worker_borrows_argument_and_gives_result(method: str) -> None:
    context = multiprocessing.get_context(method)
    with SlotPool(sweep=False) as pool:
        argument = shared.copy(np.arange(10_000, dtype=np.float64), pool=pool)
        parent_end, child_end = context.Pipe()
        worker = context.Process(target=double_in_worker, args=(child_end, pool.owner))
        worker.start()
        try:
            slot, handle = find_slot(argument)  # type: ignore[misc]
            parent_end.send(slot.pool.lend(handle, to=worker.pid))
            result_handle, returns = parent_end.recv()
            pool.returned(returns, by=worker.pid)  # type: ignore[arg-type]
            result = np.frombuffer(slot_array(pool.adopt(result_handle)), np.float64)
            parent_end.send("bye")
        finally:
            worker.join(30)
            if worker.is_alive():
                worker.kill()
                worker.join()
        assert worker.exitcode == 0
        assert np.array_equal(result, np.arange(10_000) * 2.0)
        assert not result.flags.writeable
        assert pool.reclaim(worker.pid) == []  # type: ignore[arg-type]  # it left nothing
        assert pool.stats().in_use == 2  # the argument and the adopted result
        del argument, result
        assert pool.stats().in_use == 0


def hold_slots_then_die(conn: Connection, owner: Owner) -> None:
    """A worker that takes slots in every way it can, then is killed holding them all."""
    pool = SlotPool(owner=owner, sweep=False)
    lent, gift = conn.recv()
    borrowed = shared.borrow(lent)
    stocked = pool.adopt(gift)
    made = [pool.allocate(1 << 20), pool.allocate(3 << 20)]
    conn.send([slot.handle.name for slot in made])
    conn.recv()  # keep everything alive until the parent has looked
    assert borrowed is not None and stocked is not None
    os.kill(os.getpid(), signal.SIGKILL)


def test_killed_worker_leaks_nothing_after_reclaim() -> None:
    context = multiprocessing.get_context("spawn")
    with SlotPool(sweep=False) as pool:
        lent = pool.allocate(1 << 16)
        parent_end, child_end = context.Pipe()
        worker = context.Process(target=hold_slots_then_die, args=(child_end, pool.owner))
        worker.start()
        try:
            pid: int = worker.pid  # type: ignore[assignment]
            gift = pool.give(pool.allocate(1 << 20), to=pid)
            parent_end.send((pool.lend(lent.handle, to=pid), gift))
            made = parent_end.recv()
            assert all(on_dev_shm(name) for name in [*made, gift.name])
            parent_end.send("die")
        finally:
            worker.join(30)
            if worker.is_alive():
                worker.kill()
                worker.join()
        assert worker.exitcode == -signal.SIGKILL
        assert sorted(pool.reclaim(pid)) == sorted([*made, gift.name])
        assert not any(on_dev_shm(name) for name in [*made, gift.name])
        lent.release()
        assert pool.stats().in_use == 0  # the dead worker's loan ended


def test_sweep_removes_segments_of_a_killed_parent() -> None:
    script = textwrap.dedent(
        """
        import os, signal
        from memwise.shared import SlotPool
        pool = SlotPool(sweep=False)
        slots = [pool.allocate(n) for n in (1000, 1 << 20, 5 << 20)]
        print(" ".join(slot.handle.name for slot in slots), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    child = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    names = child.stdout.split()
    assert len(names) == 3 and all(on_dev_shm(name) for name in names)
    removed = sweep_orphans()
    assert set(names) <= set(removed)
    assert not any(on_dev_shm(name) for name in names)


def test_a_new_pool_sweeps_at_start() -> None:
    dead = Owner(pid=4_000_002, tag="0")  # no such process
    with SlotPool(owner=dead, sweep=False) as ghost:
        slot = ghost.allocate(1000)
        name = slot.handle.name
        SlotPool().close()  # starting a pool sweeps orphans
        assert not on_dev_shm(name)
        slot.release()


def test_handles_pickle_small() -> None:
    handle = SlotHandle("/mw_abcde_zzzz_abcde_123456789", 48 << 20, 48_000_000, 64)
    assert pickle.loads(pickle.dumps(handle)) == handle
    assert len(pickle.dumps(handle, protocol=5)) < 150
