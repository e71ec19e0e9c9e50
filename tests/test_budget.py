"""MemoryBudget: limits, waiting, failing, releasing; direct reservations and budgeted pools.

Budgets measure real memory, which moves under the test's feet (the test process, its
workers). So the limits here are either absurdly small (nothing fits), absurdly large
(everything fits), or "what is in use now + 1.5 GiB" with 1 GiB reservations: one fits and two
never do, whatever a few MiB of drift in the measured part does.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from pathlib import Path

import pytest

import _actor_tasks as tasks
from _tasks import WAIT, wait_until
from memwise import MemoryBudget, MemoryBudgetExceeded, WorkerPool, memory
from memwise.errors import WorkerCrashed
from memwise.memory import SystemMemory, format_size

pytestmark = pytest.mark.timeout(60)

KiB, MiB, GiB, TiB = 1024, 1024**2, 1024**3, 1024**4


def one_at_a_time(max_wait: float = WAIT) -> MemoryBudget:
    """A budget with room for one 1 GiB reservation on top of what is in use now, never two."""
    return MemoryBudget(MemoryBudget(TiB).in_use() + GiB + GiB // 2, max_wait=max_wait)


# --------------------------------------------------------------------------------------------
# Limits
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limit", "expected"),
    [(1024, 1024), ("4 GiB", 4 * GiB), ("600 MiB", 600 * MiB), ("1.5GB", 1_500_000_000)],
)
def test_limit_in_bytes_or_a_size_string(limit, expected):
    assert MemoryBudget(limit).limit == expected


def test_limit_as_a_fraction_of_available_memory(monkeypatch):
    fixed = SystemMemory(total=16 * GiB, available=8 * GiB, shmem=0, shm_free=None, shm_total=None)
    monkeypatch.setattr(memory, "system", lambda: fixed)
    assert MemoryBudget(0.5).limit == 4 * GiB
    assert MemoryBudget(1.0).limit == 8 * GiB


@pytest.mark.parametrize("limit", ["lots", "-1 GiB", 1.5, 0.0, -5])
def test_invalid_limits_are_refused(limit):
    with pytest.raises(ValueError):
        MemoryBudget(limit)


@pytest.mark.parametrize("kwargs", [{"max_wait": -1}, {"poll": 0}])
def test_invalid_waits_are_refused(kwargs):
    with pytest.raises(ValueError):
        MemoryBudget(GiB, **kwargs)


def test_repr_names_the_limit():
    assert "4.0 GiB" in repr(MemoryBudget("4 GiB"))


# --------------------------------------------------------------------------------------------
# Direct reservations
# --------------------------------------------------------------------------------------------


def test_a_tiny_limit_fails_after_max_wait_with_what_was_asked_in_use_and_the_limit():
    budget = MemoryBudget(1024, max_wait=0.2)
    with pytest.raises(MemoryBudgetExceeded) as info:
        budget.acquire("5 MiB")
    message = str(info.value)
    assert "asked for 5.0 MiB" in message
    assert "in use" in message
    assert "limit of 1.0 KiB" in message
    assert budget.reserved == 0


def test_reserve_as_a_context_manager_fails_the_same_way():
    budget = MemoryBudget(1024, max_wait=0.0)
    entered = False
    with pytest.raises(MemoryBudgetExceeded), budget.reserve(100):
        entered = True
    assert not entered
    assert budget.reserved == 0


def test_a_reservation_is_held_inside_the_block_and_released_after():
    budget = MemoryBudget(TiB)
    with budget.reserve("600 MiB"):
        assert budget.reserved == 600 * MiB
    assert budget.reserved == 0


def test_a_reservation_is_released_when_the_block_raises():
    budget = MemoryBudget(TiB)
    with pytest.raises(KeyError), budget.reserve("600 MiB"):
        raise KeyError("boom")
    assert budget.reserved == 0


def test_releasing_twice_gives_back_once():
    budget = MemoryBudget(TiB)
    first = budget.acquire(GiB)
    second = budget.acquire(GiB)
    first.release()
    first.release()
    assert budget.reserved == GiB
    second.release()
    assert budget.reserved == 0


def test_try_reserve_never_waits():
    budget = one_at_a_time()
    held = budget.try_reserve(GiB)
    assert held is not None
    assert budget.try_reserve(GiB) is None
    held.release()
    again = budget.try_reserve(GiB)
    assert again is not None
    again.release()


def test_a_reservation_waits_until_there_is_room():
    budget = one_at_a_time()
    held = budget.acquire(GiB)
    with ThreadPoolExecutor(1) as executor:
        waiting = executor.submit(budget.acquire, GiB)
        # It cannot have been admitted: the first reservation still holds the room.
        assert budget.try_reserve(GiB) is None
        assert not waiting.done()
        held.release()
        admitted = waiting.result(WAIT)
    assert budget.reserved == GiB
    admitted.release()
    assert budget.reserved == 0


def test_a_timeout_overrides_max_wait():
    budget = one_at_a_time()
    with budget.reserve(GiB), pytest.raises(MemoryBudgetExceeded):
        budget.acquire(GiB, timeout=0)
    assert budget.reserved == 0


def test_reserve_in_threads_admits_one_block_at_a_time():
    budget = one_at_a_time()
    lock = threading.Lock()
    inside = 0
    most = 0

    def guarded(_: int) -> None:
        nonlocal inside, most
        with budget.reserve(GiB):
            with lock:
                inside += 1
                most = max(most, inside)
            # Give the others every chance to get in too, if the budget let them.
            threading.Event().wait(0.02)
            with lock:
                inside -= 1

    with ThreadPoolExecutor(4) as executor:
        list(executor.map(guarded, range(8)))
    assert most == 1
    assert budget.reserved == 0


def test_in_use_counts_tracked_processes(tmp_path):
    budget = MemoryBudget(TiB)
    ready = tmp_path / "ready"
    # 200 MiB written (not calloc'ed) so the pages are really resident and private.
    script = (
        "import sys, pathlib; data = b'x' * (200 * 1024 * 1024); "
        f"pathlib.Path({str(ready)!r}).touch(); sys.stdin.read()"
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE)
    try:
        assert wait_until(ready.exists)
        untracked = budget.in_use()
        budget.track(child.pid)
        tracked = budget.in_use()
        budget.untrack(child.pid)
        assert tracked - untracked > 150 * MiB, format_size(tracked - untracked)
        assert budget.in_use() - untracked < 100 * MiB
    finally:
        child.communicate(b"")
    # A tracked process that is gone counts for nothing and breaks nothing.
    budget.track(child.pid)
    assert budget.in_use() > 0


# --------------------------------------------------------------------------------------------
# Budgeted pools
# --------------------------------------------------------------------------------------------


def test_submit_memory_without_a_budget_is_refused():
    with WorkerPool(1) as pool, pytest.raises(ValueError, match="budget"):
        pool.options(memory="1 MiB").submit(tasks.square, 2)


def test_pool_reservation_released_on_success():
    budget = MemoryBudget(TiB)
    with WorkerPool(1, budget=budget) as pool:
        assert pool.options(memory="100 MiB").submit(tasks.square, 3).result(WAIT) == 9
        assert wait_until(lambda: budget.reserved == 0)


def test_pool_reservation_released_when_the_task_raises():
    budget = MemoryBudget(TiB)
    with WorkerPool(1, budget=budget) as pool:
        future = pool.options(memory="100 MiB").submit(tasks.raise_value_error, "no")
        with pytest.raises(ValueError, match="no"):
            future.result(WAIT)
        assert wait_until(lambda: budget.reserved == 0)


def test_pool_reservation_released_when_the_worker_dies():
    budget = MemoryBudget(TiB)
    with WorkerPool(1, budget=budget) as pool:
        with pytest.raises(WorkerCrashed):
            pool.options(memory="100 MiB").submit(tasks.sigkill_self).result(WAIT)
        assert wait_until(lambda: budget.reserved == 0)
        assert pool.options(memory="100 MiB").submit(tasks.square, 4).result(WAIT) == 16


def test_pool_reservation_held_while_running_and_never_taken_by_a_cancelled_task(tmp_path):
    budget = MemoryBudget(TiB)
    started, release = tmp_path / "started", tmp_path / "release"
    with WorkerPool(1, budget=budget) as pool:
        running = pool.options(memory="100 MiB").submit(tasks.block, started, release)
        tasks.wait_for(started)
        queued = pool.options(memory="300 MiB").submit(tasks.square, 5)
        assert queued.cancel()
        assert budget.reserved == 100 * MiB
        release.touch()
        running.result(WAIT)
        assert wait_until(lambda: budget.reserved == 0)
        with pytest.raises(CancelledError):
            queued.result(0)
        assert budget.reserved == 0


def test_a_task_waiting_for_room_can_be_cancelled():
    budget = one_at_a_time()
    with WorkerPool(1, budget=budget) as pool:
        held = budget.acquire(GiB)
        try:
            waiting = pool.options(memory=GiB).submit(tasks.square, 6)
            assert waiting.cancel()
        finally:
            held.release()
        assert pool.options(memory=GiB).submit(tasks.square, 7).result(WAIT) == 49
        assert wait_until(lambda: budget.reserved == 0)


def test_a_pool_task_that_never_fits_fails_with_memory_budget_exceeded():
    budget = MemoryBudget(1024, max_wait=0.2)
    with WorkerPool(1, budget=budget) as pool:
        future = pool.options(memory="8 MiB").submit(tasks.square, 2)
        with pytest.raises(MemoryBudgetExceeded) as info:
            future.result(WAIT)
        message = str(info.value)
        assert "asked for 8.0 MiB" in message
        assert "in use" in message
        assert "limit of 1.0 KiB" in message
        assert budget.reserved == 0


def test_budget_admission_never_overlaps_tasks_that_do_not_fit_together(tmp_path):
    budget = one_at_a_time()
    with WorkerPool(2, budget=budget) as pool:
        futures = [
            pool.options(memory=GiB).submit(tasks.exclusive, tmp_path, f"heavy{i}", 0.05)
            for i in range(6)
        ]
        overlaps = [future.result(WAIT) for future in futures]
    assert overlaps == [[]] * 6
    assert budget.reserved == 0


def test_budget_admission_runs_tasks_that_fit_together_at_the_same_time(tmp_path):
    budget = MemoryBudget(TiB)
    with WorkerPool(2, budget=budget) as pool:
        futures = [pool.options(memory="1 MiB").submit(tasks.meet, tmp_path, 2) for _ in range(2)]
        pids = {future.result(WAIT) for future in futures}
    assert len(pids) == 2


def test_a_budget_can_be_shared_by_a_pool_and_direct_reservations():
    budget = one_at_a_time(max_wait=0.3)
    with WorkerPool(1, budget=budget) as pool:
        future: Future[int] = pool.options(memory=GiB).submit(tasks.square, 8)
        assert future.result(WAIT) == 64
        with budget.reserve(GiB):
            blocked = pool.options(memory=GiB).submit(tasks.square, 9)
            with pytest.raises(MemoryBudgetExceeded):
                blocked.result(WAIT)
        assert budget.reserved == 0


# --------------------------------------------------------------------------------------------
# trim
# --------------------------------------------------------------------------------------------


def test_a_pool_that_trims_after_every_task_works():
    with WorkerPool(1, trim=True) as pool:
        assert pool.submit(tasks.churn, 200).result(WAIT) == 200 * 64 * KiB
        assert list(pool.map(tasks.square, range(10))) == [x * x for x in range(10)]
        assert pool.submit(tasks.echo, Path("x")).result(WAIT) == Path("x")
