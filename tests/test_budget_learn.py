"""MemoryBudget(learn=True): reservations learned from the peaks of earlier tasks."""

import sys

import pytest

import _actor_tasks as tasks
from memwise import MemoryBudget, MemoryBudgetExceeded, WorkerPool
from memwise.memory import PeakProbe

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is Linux")
MiB = 1024 * 1024


@linux_only
def test_peak_probe_sees_memory_freed_before_the_end():
    probe = PeakProbe()
    probe.start()
    tasks.allocate_and_free(64 * MiB)
    rise = probe.rise()
    assert rise is not None and rise >= 60 * MiB


@linux_only
def test_a_function_s_learned_peak_is_reserved_for_its_next_calls():
    budget = MemoryBudget("64 GiB", learn=True)
    with WorkerPool(1, budget=budget) as pool:
        pool.submit(tasks.allocate_and_free, 80 * MiB).result(30)
        learned = pool.snapshot().budget.learned
        assert max(learned.values()) >= 75 * MiB
    # A budget too small for the learned peak refuses the next call at once.
    small = MemoryBudget(budget.in_use() + 40 * MiB, learn=True, max_wait=0.2)
    with WorkerPool(1, budget=small) as pool:
        pool.submit(tasks.allocate_and_free, 80 * MiB).result(30)  # learns: nothing known yet
        with pytest.raises(MemoryBudgetExceeded):
            pool.submit(tasks.allocate_and_free, 80 * MiB).result(30)
